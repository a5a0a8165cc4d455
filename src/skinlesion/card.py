"""The model card: the metadata an exported model carries about itself, read, added to, and rendered as markdown.

No torch: the card is rendered from the .onnx file alone.
"""

import json
import os
from pathlib import Path

from skinlesion.predict import METADATA_KEY, Predictor
from skinlesion.referral import describe_scores


def read_card(onnx_path: Path) -> dict:
    """Return the metadata embedded in an exported model."""
    import onnx
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return json.loads(props[METADATA_KEY])


def recipe_lines(entry: dict) -> list[str]:
    """Render export.recipe(meta) as markdown list items."""
    lines = [f"- Training recipe: `{json.dumps(entry.get('train_config', {}))}`",
             f"- Epochs trained: {entry.get('epochs_trained', '?')}, {validation_scores(entry)}"]
    if "started_from" in entry:
        earlier = entry["started_from"]
        lines.append(f"- Started from `{earlier['model']}` ({earlier.get('size', '?')} px, "
                     f"{earlier.get('epochs_trained', '?')} epochs, {validation_scores(earlier)}), trained with "
                     f"`{json.dumps(earlier.get('train_config', {}))}`")
    if "trained_with" in entry:  # runs since 2026-12-02
        software = dict(entry["trained_with"])
        device = software.pop("device", "?")
        lines.append(f"- Trained on {device} with " + ", ".join(f"{k} {v}" for k, v in software.items()))
    if entry.get("color_constancy"):
        lines.append(f"- Colour constancy: the network greys the light of each photo first (shades of gray, power "
                     f"{entry['color_constancy']:g}), inside the exported graph, so serving does what training did")
    return lines


def validation_scores(entry: dict) -> str:
    """Render a run's validation balanced accuracy: top class, and calibrated where the run recorded it."""
    text = f"validation balanced accuracy of the top class {entry.get('val_bacc', float('nan')):.3f}"
    if "val_bacc_calibrated" in entry:
        text += f", of the calibrated decision {entry['val_bacc_calibrated']:.3f} (cross-fitted on halves)"
    return text


def after_calibration(card: dict) -> str:
    """An ensemble's calibrated validation score, where it was recorded (ensembles built since it was)."""
    if "val_bacc_calibrated" not in card:
        return ""
    return f", after it {card['val_bacc_calibrated']:.3f} (calibration fitted on one half, scored on the other)"


def referral_auc_text(metrics: dict) -> str:
    """A split's AUC for telling cancers and pre-cancers from benign lesions, where its report has it (since
    2026-12-02)."""
    if metrics.get("referral_auc") is None:
        return ""
    return (f" Cancers and pre-cancers against benign lesions by the referral score: AUC "
            f"{metrics['referral_auc']:.3f}{through_file(metrics, 'referral_auc')}.")


def through_file(metrics: dict, key: str) -> str:
    """Say so where a figure was added to the card by scripts/add_subgroups.py, through the exported file, beside
    figures measured in PyTorch."""
    return " (measured through this file)" if key in metrics.get("measured_through_file", ()) else ""


def referral_line(rule: dict) -> str:
    """Render the referral rule (referral.py) and how it did, as a markdown list item."""
    scored = "; ".join(f"{name} {describe_scores(rule[split])}"
                       for split, name in (("val", "validation"), ("test", "test")) if split in rule)
    return (f"- Referral: whatever the top class, an answer asks for a dermatologist when "
            f"{', '.join(rule['classes'])} together reach {rule['threshold']:.3f}, the threshold that refers "
            f"{rule['target_sensitivity']:.0%} of the validation split's photos of those classes ({scored}; measured "
            f"through this file)")


def add_to_card(onnx_path: Path, key: str, value) -> None:
    """Add one entry to the metadata embedded in an exported model."""
    import onnx
    onnx_model = onnx.load(str(onnx_path))
    entry = next(p for p in onnx_model.metadata_props if p.key == METADATA_KEY)
    entry.value = json.dumps({**json.loads(entry.value), key: value})
    # Beside it, then renamed over it: a kill while saving leaves the file as it was (it may be the bundled model).
    partial = Path(onnx_path).with_name(f"{Path(onnx_path).stem}.partial{Path(onnx_path).suffix}")
    onnx.save(onnx_model, str(partial))
    os.replace(partial, onnx_path)


def write_model_card(onnx_path: Path, out: Path) -> Path:
    """Render MODEL_CARD.md from the model's own metadata, so card and model cannot disagree."""
    card = read_card(onnx_path)
    members = card.get("members", [])
    title = f"ensemble of {len(members)} {card['arch']}" if members else card["arch"]
    lines = [f"# Model card: {title} ({card['size']}x{card['size']} px)", "",
             "> **Research tool, not a diagnosis.** Not a medical device; its output must not replace a dermatologist.",
             "", f"- File: `{Path(onnx_path).name}` ({Path(onnx_path).stat().st_size / 1e6:.1f} MB, "
             f"{card.get('weights', 'float32')} weights, float32 arithmetic), exported "
             f"{card.get('exported', '?')} by skinlesion {card['skinlesion_version']}",
             f"- Classes (in output order): {', '.join(card['classes'])}",
             f"- Input: {card['size']}x{card['size']} px RGB, resize policy '{card['policy']}', a dark border round "
             f"the dermatoscope's lit field painted with the skin's colour, normalised inside the model (mean "
             f"{card['mean']}, std {card['std']})",
             f"- Calibration: temperature {card['temperature']:.3f} and one offset per class, fitted on the validation "
             f"split only, for equally common classes (the prior balanced accuracy assumes): each probability is what "
             f"it would be if all diagnoses were equally common, so where naevi dominate a naevus is likelier than "
             f"shown"]
    if members:
        views = card.get("views", 1)
        shown = f", each shown {views} turned and mirrored copies of the image" if views > 1 else ""
        lines.append(f"- {len(members)} network{'s' if len(members) > 1 else ''}{shown}; each network's probabilities "
                     f"are calibrated by its own temperature, averaged over networks and views, and the average "
                     f"calibrated as above. Validation balanced accuracy of the average before that calibration "
                     f"{card['val_bacc']:.3f}{after_calibration(card)}. The members:")
        for member in members:
            lines += [f"  - `{member['model']}`:"] + [f"    {line}" for line in recipe_lines(member)]
    else:
        lines += recipe_lines(card)
    if "float16_check" in card:
        check = card["float16_check"]
        lines.append(f"- The metrics below are PyTorch's. This file, with float16 weights, scores validation "
                     f"balanced accuracy {check['balanced_accuracy_onnx']:.4f} (PyTorch "
                     f"{check['balanced_accuracy_pytorch']:.4f}) and gives the same top class for "
                     f"{check['agreement']:.1%} of {check['images']} images.")
    if card.get("referral"):
        lines.append(referral_line(card["referral"]))
    lines.append("")
    grouping = "lesion-grouped" if (card.get("data") or {}).get("protocol", "lesion") == "lesion" else "split per photo"
    for split in ("val", "test"):
        m = card.get("metrics", {}).get(split)
        if not m:
            continue
        low, high = m["balanced_accuracy_ci95"]
        use = "; every choice and the calibration were made on it, so optimistic" if split == "val" else ""
        name = "Validation" if split == "val" else "Test"
        lines += [f"## {name} split ({m['images']} images, {grouping}{use})", "",
                  f"Balanced accuracy **{m['balanced_accuracy']:.3f}** (mean per-class recall, the ISIC metric; "
                  f"95% interval {low:.3f}-{high:.3f} by a bootstrap within classes); "
                  f"accuracy {m['accuracy']:.3f}; macro AUC {m['macro_auc']:.3f}; expected calibration error "
                  f"{m.get('ece_class_balanced', float('nan')):.3f} with classes weighted equally, as the "
                  f"probabilities assume ({m['ece']:.3f} unweighted)." + referral_auc_text(m), "",
                  "| class | " + " | ".join(m["recall"]) + " |", "|---|" + "---:|" * len(m["recall"]),
                  "| recall | " + " | ".join("-" if r is None else f"{r:.3f}" for r in m["recall"].values()) + " |", ""]
        if isinstance(m.get("subgroups"), list):  # evaluate's lines by sex, age and site (subgroups.py)
            lines += [f"Balanced accuracy (photos) by patient group{through_file(m, 'subgroups')}; a group's classes "
                      f"differ, so compare with care:",
                      "", *[f"- {line}" for line in m["subgroups"]], ""]
    lines += reproduce_lines(onnx_path, card)
    lines += ["## Data and limitations", ""] + data_lines(card.get("data")) + [
              "- Every choice (epochs, recipe, ensemble members) and the calibration were made on the validation "
              "split; the test split was never used for them.",
              "- Dermoscopic photos only. Clinical (non-dermoscopic) photos, other body sites, skin types and cameras "
              "under-represented in ISIC will do worse. It is not a diagnostic device.",
              "- Send the photo as the dermatoscope or camera saved it: saved again with strong lossy compression "
              "(JPEG below quality 75, or WebP, as messaging apps do) it scores clearly worse (the bundled file lost "
              "about 0.1 balanced accuracy at JPEG quality 50; README, 'Photos saved again with lossy compression').",
              ""]
    Path(out).write_text("\n".join(lines))
    return Path(out)


def reproduce_lines(onnx_path: Path, card: dict) -> list[str]:
    """Say how to rebuild the test split from the file's own record of the photos it met (seen.py), if it has one."""
    seen = Predictor(onnx_path).seen
    if not seen:
        return []
    name = Path(onnx_path).name
    return ["## Checking the test figures", "",
            f"The file lists the ISIC ids of its {len(seen['train']['images']):,} training and "
            f"{len(seen['val']['images']):,} validation photos and of their lesions, so its split can be rebuilt from "
            f"the data alone, and its test figures checked:", "", "```bash",
            f"skinlesion prepare --data ISIC_2019_FOLDER --out prepared --balance all --classes "
            f"{','.join(card['classes'])} --size {card['size']} --resize {card['policy']} --splits-from {name}",
            f"skinlesion evaluate {name} --data prepared --split test", "```", "",
            "On a larger set (the full ISIC 2019 training set) the same commands test it on every photo it never met, "
            "photos of lesions it met left out.", ""] + (
        ["It also holds a near-duplicate hash of each of those photos, so `skinlesion predict` and the web app "
         "flag a renamed copy of one (or the same lesion photographed again) as well as a file named like one.", ""]
        if "hashes" in seen["train"] else [])


def data_lines(data: dict | None) -> list[str]:
    """Render the card's record of the data a model was trained and scored on (prepare.data_record) as list items."""
    if not data:  # files exported before cards recorded their data: all trained on the project's sample
        return ["- Trained on a 12,922-image sample of the ISIC 2019 training set (HAM10000 almost complete, most of "
                "MSK, only 14 BCN_20000 images), downsized to at most 256 px. Licence CC BY-NC: non-commercial use "
                "only.",
                "- Rare classes are thin: AK 130, DF 115, VASC 142, SCC 197 images in the whole sample, so their "
                "recalls rest on about 20-30 test images each and are uncertain by roughly +-10 points.",
                "- Split by lesion (no lesion in two of train/val/test)."]
    split = ("by lesion (no lesion in two of train/val/test)" if data["protocol"] == "lesion" else
             "per photo, as the paper does (photos of one lesion can sit in two splits)")
    per_class = ", ".join(f"{code} {n}" for code, n in data["per_class"].items())
    lines = [f"- Trained on {sum(data['train'].values()):,} of the {data['images']:,} photos read from "
             f"`{data['folder']}` ({per_class}); validation {sum(data['val'].values()):,} and test "
             f"{sum(data['test'].values()):,} photos, split {split}. ISIC data is CC BY-NC: non-commercial use only."]
    thin = {code: n for code, n in data["test"].items() if 0 < n < 100}  # recall uncertain by 5 points or more
    if thin:
        error = sorted(50 / n ** 0.5 for n in thin.values())  # one standard error of a recall near 50%, in points
        lines.append(f"- Rare classes are thin: their test recalls rest on "
                     f"{', '.join(f'{code} {n}' for code, n in thin.items())} photos, so each is uncertain by roughly "
                     f"+-{error[0]:.0f} to +-{error[-1]:.0f} points.")
    return lines
