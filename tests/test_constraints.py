"""constraints.txt: the versions the tests passed with pin every install the README, CI and the Dockerfile make."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "write_constraints.py"


def load_script():
    spec = importlib.util.spec_from_file_location("write_constraints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_constraints_pin_every_installed_requirement_at_its_installed_version():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pins = (ROOT / "constraints.txt").read_text()
    for name in ("flask", "onnxruntime", "numpy", "torch", "timm", "isic-challenge-scoring", "werkzeug"):
        assert f"\n{name}==" in pins  # direct and indirect requirements alike
    assert "skinlesion==" not in pins
    assert "-c constraints.txt . " in (ROOT / "Dockerfile").read_text()


def test_the_check_names_each_package_that_differs(tmp_path, monkeypatch, capsys):
    script = load_script()
    wanted = script.constraints_text(script.installed_closure())
    flask_line = next(line for line in wanted.splitlines() if line.startswith("flask=="))
    edited = wanted.replace(flask_line, f"flask==0.1; {script.WHERE_TESTED}")
    edited = "\n".join(line for line in edited.splitlines() if not line.startswith("werkzeug=="))
    edited += f"\nleftpad==1.0; {script.WHERE_TESTED}\n"
    monkeypatch.setattr(script, "CONSTRAINTS", tmp_path / "constraints.txt")
    script.CONSTRAINTS.write_text(edited)
    monkeypatch.setattr(sys, "argv", ["write_constraints.py", "--check"])
    with pytest.raises(SystemExit, match="does not match what is installed"):
        script.main()
    errors = capsys.readouterr().err
    assert f"pinned flask==0.1, installed {flask_line.split(';')[0]}" in errors
    assert "not pinned: werkzeug==" in errors and "pinned but not required: leftpad==1.0" in errors
    monkeypatch.setattr(sys, "argv", ["write_constraints.py"])  # writing it anew mends it
    script.main()
    assert script.CONSTRAINTS.read_text() == wanted
