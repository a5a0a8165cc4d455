"""A run folder's guards: resume only the run it holds; start only from a model that never met our held-out data."""

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from skinlesion.models import MODEL_FORMAT, load_model
from skinlesion.prepare import photo_hashes, read_summary
from skinlesion.seen import recorded_seen, seen_rows, why_unrecorded

if TYPE_CHECKING:
    from skinlesion.training import TrainConfig

WHERE_IT_RUNS = ("accelerator", "devices", "num_nodes")  # may change when a run resumes on another machine


def prepared_digest(prepared_dir: Path) -> str:
    """Hash what a run learns from in a prepared folder besides its pixels: the split and its settings (not where the
    photos or their pixel cache lie, whether the last `prepare` reused the cache or found old ones: scripts prepare
    again, unchanged, before they resume, and `prepare` refuses other photos or another split over a folder)."""
    digest = hashlib.sha256((prepared_dir / "splits.csv").read_bytes())
    summary = read_summary(prepared_dir)
    for volatile in ("data", "cache", "cache_reused", "old_caches"):
        summary.pop(volatile, None)
    digest.update(json.dumps(summary, sort_keys=True).encode())
    return digest.hexdigest()


def check_same_run(run_dir: Path, prepared_dir: Path, config: "TrainConfig") -> None:
    """Refuse to resume with other settings or data: the checkpoint, its schedule and its split are the run's."""
    path = run_dir / "train_config.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
        problem = "" if isinstance(saved, dict) and "prepared" in saved else "not what 'skinlesion train' writes"
    except ValueError as error:
        problem = str(error)
    if problem:
        raise ValueError(f"{path}: damaged ({problem}), so the run's settings and data cannot be checked; write back "
                         f"a copy if you have one, or train into another --out")
    ours = asdict(config)
    changed = [f"{key} {ours[key]!r} (the run: {saved[key]!r})" for key in ours
               if key in saved and key not in WHERE_IT_RUNS and ours[key] != saved[key]]
    # By content where the run recorded it (a moved copy is the same data; a folder prepared again in place is
    # not), else by path (runs from before 2026-12-02).
    same_data = saved["prepared_digest"] == prepared_digest(prepared_dir) if "prepared_digest" in saved else \
        Path(saved["prepared"]).resolve() == prepared_dir.resolve()
    if not same_data:
        changed.append(f"data {prepared_dir} (the run: {saved['prepared']}, as it was then)")
    if changed:
        raise ValueError(f"{run_dir}: --resume continues a run with the settings and data it started with; repeat "
                         f"its command with --resume. Differing: {'; '.join(changed)}")


def start_from(model, init: Path, config: "TrainConfig", prepared) -> None:
    """Copy a saved model's weights into the new network, refusing one whose training saw our val or test images."""
    saved, meta = load_model(init)
    if meta["format"] != MODEL_FORMAT:
        raise ValueError(f"{init}: an ensemble cannot start a training run; pass one of its members")
    # The network's shape (arch, width, classes) and what it does to the pixels first (colour constancy) must match,
    # or the copied weights would not fit or would see differently coloured inputs than they were trained on.
    theirs = (meta["arch"], meta["width"], meta.get("color_constancy", 0.0), list(meta["classes"]))
    ours = (config.model, config.width, config.color_constancy, list(prepared.classes))
    if theirs != ours:
        def describe(arch, width, constancy, classes):
            return f"a {arch} (width {width}, colour constancy {constancy}) over {', '.join(classes)}"
        raise ValueError(f"{init}: {describe(*theirs)} cannot start {describe(*ours)}; use the same --model, "
                         f"--width and --color-constancy, on data with the same classes")
    check_held_out(init, meta, prepared)
    model.load_state_dict(saved.state_dict())


def check_held_out(path: Path, meta: dict, prepared) -> None:
    """Refuse a saved model that trained on any of our validation or test photos or, in a lesion-grouped folder, on
    another photo of one of their lesions or a photo near-identical in pixels (seen.seen_rows)."""
    seen = recorded_seen(meta)
    if seen is None:
        where = why_unrecorded(meta, "it names no training folder")
        raise ValueError(f"{path}: it does not record its training data ({where}), so it cannot be checked against "
                         f"ours")
    by_lesion = prepared.protocol == "lesion"
    held_out = prepared.table[prepared.table["split"].isin(["val", "test"])]
    # What a model met before a validation score is its training split: exactly what must not touch ours.
    # Hashes compare only when taken at one size and policy: a stage at 128 px may start one at 192 px.
    same_input = (meta.get("size"), meta.get("policy")) == (prepared.size, prepared.policy)
    hashes = photo_hashes(prepared.out_dir) if same_input else None
    met = held_out[seen_rows(held_out, seen, "val", by_lesion, hashes).to_numpy()]
    if len(met):
        what = ("images (by name or pixels) or their lesions" if hashes else "images or their lesions") if by_lesion \
            else "images"
        fix = f"prepare ours with --splits-from {meta['prepared']}" if meta.get("prepared") else \
            "prepare ours with --splits-from the folder it was trained from"
        raise ValueError(f"{path} was trained on {len(met)} of our validation/test {what} "
                         f"(e.g. {met['image'].iloc[0]}); {fix}")
