#!/usr/bin/env bash
# Rebuild the bundled model (src/skinlesion/bundled/) from scratch on the ISIC 2019 sample
# (about 50 min on 2 free CPU cores: ~20 min at 128 px, ~30 min at 192 px).
# Re-running it resumes an interrupted stage and skips finished ones. Usage: scripts/build_bundled_model.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/isic2019}
WORK=${WORK:-work/bundled}

# train_stage RUN ARGS...: train into RUN unless it already holds a model; resume if it was interrupted.
train_stage() {
    local run=$1; shift
    [ -f "$run/model.pt" ] && return 0
    local resume=""
    [ -f "$run/checkpoints/last.ckpt" ] && resume="--resume"
    skinlesion train --model efficientnet_lite0 --out "$run" --imbalance sampler --dropout 0.3 "$@" $resume
}

# All 8 classes, no undersampling; the sampler balances classes instead of throwing images away.
skinlesion prepare --data "$DATA" --out "$WORK/prepared128" --balance all --size 128 --resize squash
# Stage 1, 128 px from the ImageNet weights: 60 batches of 64 balanced draws per epoch (every class is seen
# ~480 times an epoch), one-cycle to 1e-3; early stopping ends it (best validation bacc 0.632, epoch 4 of 13).
# Tried instead, both worse on validation: 16 full epochs peaking at 3e-4 (best 0.608, then it overfits the
# oversampled rare classes), and every image each epoch with class weights, lr 3e-4, 12 epochs (best 0.579).
train_stage "$WORK/run128" --data "$WORK/prepared128" --epochs 25 --limit-train-batches 60 --lr 1e-3 --patience 8

# Stage 2, 192 px (about the native size of the sample's 200x150 HAM10000 photos), on the same split.
skinlesion prepare --data "$DATA" --out "$WORK/prepared192" --balance all --size 192 --resize squash \
    --splits-from "$WORK/prepared128"
train_stage "$WORK/run192" --data "$WORK/prepared192" --init "$WORK/run128/model.pt" --epochs 4 --lr 1e-4 --patience 4

# Scores that travel with the model: validation (used for selection and calibration) and test (used once).
skinlesion evaluate "$WORK/run192" --data "$WORK/prepared192" --split val
skinlesion evaluate "$WORK/run192" --data "$WORK/prepared192" --split test
skinlesion export "$WORK/run192" --out src/skinlesion/bundled/model.onnx --card src/skinlesion/bundled/MODEL_CARD.md
