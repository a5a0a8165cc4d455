"""Add the referral rule to a file exported before `skinlesion export` fitted one (2026-12-02).

Usage: python scripts/add_referral.py MODEL.onnx PREPARED_DIR
PREPARED_DIR must hold the model's own validation split: a folder the model was trained on, or one prepared with
`--splits-from MODEL.onnx`. The rule is fitted on that validation split through the file itself and scored on the
test split, exactly as `export` does (export.add_referral); both go into the file's card. Then render the card again
with `skinlesion export`'s card writer (card.write_model_card), as this script does when the file has one beside it.
"""

import argparse
from pathlib import Path

from skinlesion.card import write_model_card
from skinlesion.export import add_referral
from skinlesion.prepare import load_prepared
from skinlesion.referral import describe_referral


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("prepared", type=Path)
    args = parser.parse_args()
    rule = add_referral(args.model, load_prepared(args.prepared))
    if rule is None:
        raise SystemExit(f"{args.prepared}: no referral fitted; its validation split needs benign and non-benign "
                         f"photos")
    for split in ("val", "test"):
        if split in rule:
            print(f"{split}: {describe_referral(rule['threshold'], rule[split], rule['classes'])}")
    card = args.model.with_name("MODEL_CARD.md")
    if card.is_file():
        print(f"model card: {write_model_card(args.model, card)}")


if __name__ == "__main__":
    main()
