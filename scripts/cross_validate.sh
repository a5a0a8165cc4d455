#!/usr/bin/env bash
# Lesion-grouped K-fold cross-validation of one training recipe on an ISIC 2019 layout, the protocol behind the
# best published honest ISIC 2019 figures: K prepares (`--folds K --fold I`, the same seed so the same folds), one
# run each, every image tested once. Prints each fold's test balanced accuracy and per-class recall, their mean and
# spread, and the balanced accuracy of all folds' test predictions pooled. Re-running it skips finished folds and
# resumes an interrupted run.
# Usage: [WORK=work/cv] [FOLDS=5] [SIZE=128] [TRAIN_OPTIONS=...] [PREPARE_OPTIONS=...] scripts/cross_validate.sh \
#        [DATA_DIR]
# The recipe is stage 1 of the bundled model (EfficientNet-Lite0 from ImageNet weights, balanced sampler, up to 25
# epochs of 60 batches) at SIZE px, one network, one view; TRAIN_OPTIONS are added to every `skinlesion train`
# and win over the recipe's, e.g. "--accelerator gpu" or "--model resnet50 --no-pretrained".
# Measured on our sample with FOLDS=5 SIZE=64 (48 min on 2 cores): test bacc 0.559 mean, folds 0.540-0.608;
# with TRAIN_OPTIONS="--model mobilenet_v2" 0.484 (docs/experiments.md, "How noisy is one split?").
# Those folds were dealt before 2026-12-02: PREPARE_OPTIONS="--deal largest-first" deals them again.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/isic2019}
WORK=${WORK:-work/cv}
FOLDS=${FOLDS:-5}
SIZE=${SIZE:-128}

for ((fold = 0; fold < FOLDS; fold++)); do
    prepared="$WORK/prepared-fold$fold"
    run="$WORK/run-fold$fold"
    # One pixel cache for every fold: the same photos at one size, decoded once.
    skinlesion prepare --data "$DATA" --out "$prepared" --balance all --size "$SIZE" --resize squash \
        --folds "$FOLDS" --fold "$fold" --cache-dir "$WORK/cache" ${PREPARE_OPTIONS:-}
    if [ ! -f "$run/model.pt" ]; then
        resume=""
        [ -f "$run/checkpoints/last.ckpt" ] && resume="--resume"
        skinlesion train --data "$prepared" --out "$run" --model efficientnet_lite0 --imbalance sampler \
            --dropout 0.3 --epochs 25 --limit-train-batches 60 --lr 1e-3 --patience 8 $resume ${TRAIN_OPTIONS:-}
    fi
    [ -f "$run/eval-test/metrics.json" ] || skinlesion evaluate "$run" --data "$prepared" --split test
done

python - "$WORK" "$FOLDS" <<'PYTHON'
import json
import sys
from pathlib import Path

import pandas as pd

from skinlesion.metrics import balanced_accuracy

work, folds = Path(sys.argv[1]), int(sys.argv[2])
reports = [work / f"run-fold{fold}" / "eval-test" for fold in range(folds)]
rows = []
for fold, report in enumerate(reports):
    metrics = json.loads((report / "metrics.json").read_text())
    rows.append({"fold": fold, "images": metrics["images"], "bacc": metrics["balanced_accuracy"], **metrics["recall"]})
table = pd.DataFrame(rows).set_index("fold")
print(table.to_string(float_format="%.3f"))
print(f"mean of {folds} folds: balanced accuracy {table['bacc'].mean():.3f} (standard deviation "
      f"{table['bacc'].std():.3f}); recall " + "  ".join(f"{c} {table[c].mean():.3f}" for c in table.columns[2:]))
truth = pd.concat([pd.read_csv(report / "truth.csv") for report in reports]).set_index("image")
predictions = pd.concat([pd.read_csv(report / "predictions.csv") for report in reports]).set_index("image")
classes = [c for c in truth.columns if truth[c].sum() > 0]
y_true = truth[classes].to_numpy().argmax(axis=1)
y_pred = predictions.loc[truth.index, classes].to_numpy().argmax(axis=1)
print(f"pooled: balanced accuracy {balanced_accuracy(y_true, y_pred, len(classes)):.3f} over {len(truth)} test "
      f"images, each tested once: {truth.index.is_unique}")
PYTHON
