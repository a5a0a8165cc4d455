"""Add the referral rule to a file exported before `skinlesion export` fitted one (2026-12-02).

Usage: python scripts/add_referral.py MODEL.onnx PREPARED_DIR [--sensitivity 0.95]
PREPARED_DIR must hold the model's own validation split: a folder the model was trained on, or one prepared with
`--splits-from MODEL.onnx`. The rule is fitted on that validation split through the file itself and scored on the
test split, exactly as `export` does (export.add_referral; --sensitivity as export's --referral-sensitivity); both go
into the file's card; run again, it replaces the file's rule. Then render the card again
with `skinlesion export`'s card writer (card.write_model_card), as this script does when the file has one beside it.
"""

import argparse
from pathlib import Path

from skinlesion.card import write_model_card
from skinlesion.export import add_referral
from skinlesion.prepare import load_prepared
from skinlesion.referral import REFERRAL_SENSITIVITY, check_sensitivity, describe_referral


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--sensitivity", type=float, default=REFERRAL_SENSITIVITY,
                        help="share of validation's cancers and pre-cancers to refer (default %(default)s)")
    args = parser.parse_args()
    try:
        check_sensitivity(args.sensitivity)  # before the file runs over two splits
        rule = add_referral(args.model, load_prepared(args.prepared), args.sensitivity)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
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
