"""Write constraints.txt: the exact version of every package skinlesion[train,dev] installs, as tested here.

Usage: python scripts/write_constraints.py [--check]
pyproject.toml gives ranges, so a fresh install takes the newest releases inside them, and a new release of Flask,
onnxruntime or numpy could change the server or the numbers after the tests last passed. `pip install -c
constraints.txt ...` (README, .ci/run, Dockerfile) installs the versions the tests passed with instead. Every line holds
on Linux x86_64 with Python 3.11, where they were tested (the Dockerfile's Python), and is ignored elsewhere, where the
ranges of pyproject.toml decide. The packages are skinlesion's requirements with the train and dev extras and theirs,
followed from the installed distributions' metadata, at their installed versions: run it after upgrading a package or
adding a dependency. `--check` writes nothing and exits 1, naming each difference, when constraints.txt does not match
what is installed (tests/test_constraints.py).
"""

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT, EXTRAS = "skinlesion", ("train", "dev")
CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"
WHERE_TESTED = 'python_version == "3.11" and sys_platform == "linux" and platform_machine == "x86_64"'
HEADER = ("# The versions skinlesion's tests passed with (Linux x86_64, Python 3.11); elsewhere pyproject.toml's\n"
          "# ranges decide. Written by scripts/write_constraints.py; used as pip install -c constraints.txt ...\n")


def installed_closure() -> dict[str, str]:
    """Return {name: installed version} for every distribution skinlesion[train,dev] requires, directly or not."""
    extras_followed, versions, todo = {}, {}, [(PROJECT, EXTRAS)]
    while todo:
        name, extras = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is required but not installed: pip install -e \".[train,dev]\" first") from None
        versions[canonicalize_name(name)] = dist.version
        environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            key = canonicalize_name(requirement.name)
            if key in extras_followed and requirement.extras <= extras_followed[key]:
                continue  # followed already, with these extras
            extras_followed[key] = extras_followed.get(key, set()) | requirement.extras
            todo.append((requirement.name, tuple(extras_followed[key])))
    versions.pop(PROJECT, None)
    return versions


def constraints_text(versions: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}; {WHERE_TESTED}\n" for name, version in sorted(versions.items()))


def differences(written: str, wanted: str) -> list[str]:
    """Name the lines of constraints.txt that differ from what is installed."""
    pins = {line.split("==")[0]: line for line in written.splitlines() if "==" in line}
    needed = {line.split("==")[0]: line for line in wanted.splitlines() if "==" in line}
    return ([f"not pinned: {needed[name].split(';')[0]}" for name in sorted(needed.keys() - pins.keys())]
            + [f"pinned but not required: {pins[name].split(';')[0]}" for name in sorted(pins.keys() - needed.keys())]
            + [f"pinned {pins[name].split(';')[0]}, installed {needed[name].split(';')[0]}"
               for name in sorted(pins.keys() & needed.keys()) if pins[name] != needed[name]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing; exit 1 on a difference")
    args = parser.parse_args()
    versions = installed_closure()
    wanted = constraints_text(versions)
    if not args.check:
        CONSTRAINTS.write_text(wanted)
        print(f"wrote {CONSTRAINTS} ({len(versions)} packages)")
        return
    found = differences(CONSTRAINTS.read_text() if CONSTRAINTS.exists() else "", wanted)
    for line in found:
        print(f"{CONSTRAINTS.name}: {line}", file=sys.stderr)
    if found:
        sys.exit(f"{CONSTRAINTS.name} does not match what is installed: run python scripts/write_constraints.py")
    print(f"{CONSTRAINTS.name} matches the {len(versions)} installed packages")


if __name__ == "__main__":
    main()
