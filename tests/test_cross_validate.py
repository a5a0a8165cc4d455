"""scripts/cross_validate.sh: K lesion-grouped folds, one run each, every image tested once, summarised."""

import os
import subprocess
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cross_validate.sh"


def test_the_script_tests_every_image_once_and_summarises_the_folds(layout40, tmp_path):
    # The real script on 40 real images a class, two folds at 32 px, each training cut to 2 batches.
    work = tmp_path / "cv"
    env = {**os.environ, "WORK": str(work), "FOLDS": "2", "SIZE": "32",
           "TRAIN_OPTIONS": "--epochs 1 --limit-train-batches 2 --batch-size 16"}
    done = subprocess.run(["bash", str(SCRIPT), str(layout40)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tested = [pd.read_csv(work / f"prepared-fold{k}" / "splits.csv").query("split == 'test'") for k in (0, 1)]
    assert not set(tested[0]["image"]) & set(tested[1]["image"])
    assert sum(len(t) for t in tested) == 320
    assert "mean of 2 folds: balanced accuracy" in done.stdout
    assert "over 320 test images, each tested once: True" in done.stdout
    # A second run finds every fold finished and only summarises again.
    again = subprocess.run(["bash", str(SCRIPT), str(layout40)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "model written to" in done.stdout and "model written to" not in again.stdout
    assert again.stdout.splitlines()[-1] == done.stdout.splitlines()[-1]
