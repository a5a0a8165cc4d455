"""Add the scores by patient group and the referral AUC to the card of a file exported before `evaluate` reported them.

Usage: python scripts/add_subgroups.py MODEL.onnx PREPARED_DIR
PREPARED_DIR must hold the model's own split: a folder the model was trained on, or one prepared with `--splits-from
MODEL.onnx` from a data folder with the ISIC metadata CSV. Each of the validation and test splits is scored through
the file itself, exactly as `skinlesion evaluate MODEL.onnx` scores it (its reports go where evaluate's do, to
eval-STEM-SPLIT in the current folder), and its lines by sex, age and site and its AUC for telling cancers and
pre-cancers from benign lesions join that split's figures in the card, marked as measured through the file (a card's
other figures may be PyTorch's). Only those two entries change; run again, it replaces them. Then the card is
rendered again when the file has one beside it.
"""

import argparse
from pathlib import Path

from skinlesion.card import add_to_card, read_card, write_model_card
from skinlesion.evaluate import evaluate_model
from skinlesion.isic import DataError

ADDED = ("subgroups", "referral_auc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("prepared", type=Path)
    args = parser.parse_args()
    try:
        metrics = read_card(args.model).get("metrics", {})
        for split in ("val", "test"):
            if split not in metrics:
                print(f"{split}: not on the card, left alone")
                continue
            scored, report = evaluate_model(args.model, args.prepared, split)
            if not isinstance(scored.get("subgroups"), list):
                raise ValueError(f"{args.prepared}: the {split} split has no patient groups ({scored['subgroups']})")
            if scored["images"] != metrics[split]["images"]:
                raise ValueError(f"{args.prepared}: its {split} split scores {scored['images']} photos, the card's "
                                 f"{metrics[split]['images']}; prepare it with --splits-from {args.model}")
            metrics[split] = {**metrics[split], **{key: scored[key] for key in ADDED}, "measured_through_file": ADDED}
            print(f"{split}: {'; '.join(scored['subgroups'])}; referral AUC {scored['referral_auc']:.3f} ({report})")
        add_to_card(args.model, "metrics", metrics)
    except (OSError, ValueError, DataError) as error:
        raise SystemExit(f"error: {error}") from None
    card = args.model.with_name("MODEL_CARD.md")
    if card.is_file():
        print(f"model card: {write_model_card(args.model, card)}")


if __name__ == "__main__":
    main()
