#!/usr/bin/env bash
# Rebuild the bundled model (src/skinlesion/bundled/) from scratch on the ISIC 2019 sample: an ensemble of two
# EfficientNet-Lite0 networks, one trained by the recipe below (seed 1), one by the same recipe with mixup and
# weight averaging (seed 0); about 60 min per member on 2 free CPU cores (25-35 min at 128 px, 25 min at 192 px).
# Re-running it resumes an interrupted stage and skips finished ones.
# Usage: [WORK=work/bundled] [VIEWS=4] [OUT=src/skinlesion/bundled] [TRAIN_OPTIONS=...] [PREPARE_OPTIONS=...] \
#        scripts/build_bundled_model.sh [DATA_DIR]
# PREPARE_OPTIONS are added to the first `skinlesion prepare`: "--deal largest-first" deals the split the shipped
# file was trained on (lesions are dealt in random order since 2026-12-02).
# VIEWS=1 OUT=some/folder builds the same pair served about 3.5 times faster, beside the bundled model;
# TRAIN_OPTIONS are added to every `skinlesion train` (and win over the recipe's), e.g. "--accelerator gpu", or
# "--epochs 1 --limit-train-batches 2" for a quick check of the whole script (tests/test_bundled.py), or
# "--augmentation standard --select top-class", the recipe of the file shipped until 2026-11-29 (validation 0.737
# on photos as they are, 0.597-0.639 under another dermatoscope's colour cast; docs/experiments.md, "The
# cast-trained pair").
# (The shipped file's members were trained by the same commands into /work/casts/run{128,192}-{seed1,mixema-seed0}
# from the caches /work/ringcal/prepared{128,192}, the same split; its card names those folders.)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/isic2019}
WORK=${WORK:-work/bundled}
VIEWS=${VIEWS:-4}  # copies of each image every network sees (1, 2, 4 or 8)
OUT=${OUT:-src/skinlesion/bundled}  # model.onnx and MODEL_CARD.md go here

# train_stage RUN ARGS...: train into RUN unless it already holds a model; resume if it was interrupted.
train_stage() {
    local run=$1; shift
    [ -f "$run/model.pt" ] && return 0
    local resume=""
    [ -f "$run/checkpoints/last.ckpt" ] && resume="--resume"
    # 30% of training photos get a painted round field (a dermatoscope's ring) and every photo's colour channels
    # are scaled by up to 15% (another dermatoscope's light); epochs are kept by the calibrated decision's score.
    skinlesion train --model efficientnet_lite0 --out "$run" --imbalance sampler --dropout 0.3 \
        --augmentation ringed-casts --select calibrated \
        "$@" $resume ${TRAIN_OPTIONS:-}
}

# All 8 classes, no undersampling; the sampler balances classes instead of throwing images away.
skinlesion prepare --data "$DATA" --out "$WORK/prepared128" --balance all --size 128 --resize squash \
    ${PREPARE_OPTIONS:-}
# 192 px is about the native size of the sample's 200x150 HAM10000 photos; same split as at 128 px.
skinlesion prepare --data "$DATA" --out "$WORK/prepared192" --balance all --size 192 --resize squash \
    --splits-from "$WORK/prepared128"

# build_member NAME SEED [EXTRA TRAIN OPTIONS]: two stages into $WORK/run128-NAME and $WORK/run192-NAME.
build_member() {
    local name=$1 seed=$2; shift 2
    # Stage 1, 128 px from the ImageNet weights: 60 batches of 64 balanced draws per epoch (every class is seen
    # ~480 times an epoch), one-cycle to 1e-3 (the shipped members ran all 25 epochs and kept epochs 18 and 19).
    # Tried instead, both worse on validation: 16 full epochs peaking at 3e-4 (best 0.608, then it overfits the
    # oversampled rare classes), and every image each epoch with class weights, lr 3e-4 (0.579).
    train_stage "$WORK/run128-$name" --data "$WORK/prepared128" --seed "$seed" \
        --epochs 25 --limit-train-batches 60 --lr 1e-3 --patience 8 "$@"
    # Stage 2, 192 px, fine-tuned from stage 1 on the same split.
    train_stage "$WORK/run192-$name" --data "$WORK/prepared192" --seed "$seed" \
        --init "$WORK/run128-$name/model.pt" --epochs 4 --lr 1e-4 --patience 4 "$@"
}

# Two members: three in float16 would be 20.6 MB, over the 20 MB limit. Chosen on validation by a rule fixed before
# it was trained (docs/experiments.md, "The cast-trained pair"): this pair scores 0.731 on photos as they are
# (calibration cross-fitted, 4 views; the previous pair 0.737) and much better under rings and colour casts.
build_member seed1 1
# Mixup blends pairs of images and labels; the moving average of the weights is what this member keeps.
build_member mixema-seed0 0 --mixup 0.2 --ema 0.995
members=("$WORK/run192-seed1" "$WORK/run192-mixema-seed0")

# Average the members' calibrated probabilities over 4 views of each image (as is, mirrored either way, turned
# 180 degrees); calibrate the average on validation for equally common classes. Views chosen on validation
# (calibration fitted on one half, scored on the other, 10 halvings) for the previous pair: 1, 2, 4, 8 views 0.712,
# 0.722, 0.733, 0.727.
# With the default 4 views that is 8 network passes an image when served (2 x VIEWS).
ensemble="$WORK/ensemble-${VIEWS}views"
skinlesion ensemble "${members[@]}" --views "$VIEWS" --out "$ensemble"
# Scores that travel with the model: validation (used for selection and calibration) and test (used once).
skinlesion evaluate "$ensemble" --data "$WORK/prepared192" --split val
skinlesion evaluate "$ensemble" --data "$WORK/prepared192" --split test
skinlesion export "$ensemble" --out "$OUT/model.onnx" --fp16 --card "$OUT/MODEL_CARD.md"
