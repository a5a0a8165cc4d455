"""Reports: score a saved model on a split and write its metrics, plots and ISIC CSVs. No torch."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from skinlesion.calibration import calibrated, softmax
from skinlesion.classes import CODES
from skinlesion.imaging import check_model_input
from skinlesion.metrics import (balanced_accuracy, confidence_bins, confusion_matrix, expected_calibration_error,
                                macro_auc, paired_difference, paired_score_difference, per_class_table, roc_auc,
                                roc_points, summarise)
from skinlesion.referral import concerning, referral_score, referral_scores
from skinlesion.seen import seen_before
from skinlesion.subgroups import describe_subgroups, patient_groups_or_reason, subgroup_table


def write_submission(path: Path, images, probs: np.ndarray, classes, columns=CODES) -> None:
    """Write an ISIC submission CSV: image + one probability column per code; 0.0 for codes the model lacks."""
    frame = pd.DataFrame({"image": list(images)})
    for code in columns:
        frame[code] = probs[:, list(classes).index(code)].astype(float) if code in classes else 0.0
    frame.to_csv(path, index=False, float_format="%.8f")  # enough digits that rounding does not create argmax ties


def write_truth(path: Path, images, y_true: np.ndarray, classes) -> None:
    """Write one-hot ground truth in the ISIC layout for the official scorer."""
    onehot = np.eye(len(classes))[y_true]
    frame = pd.DataFrame(onehot, columns=list(classes))
    frame.insert(0, "image", list(images))
    frame.to_csv(path, index=False, float_format="%.1f")


def pyplot():
    """Return matplotlib's pyplot on the file-only backend (imported late: serving never needs it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(matrix: np.ndarray, classes, path: Path) -> None:
    plt = pyplot()
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title("confusion matrix (colour: share of true class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(probs: np.ndarray, y_true: np.ndarray, path: Path, bins: int = 15) -> None:
    plt = pyplot()
    _, correct, which = confidence_bins(probs, y_true, bins)
    centres = (np.arange(bins) + 0.5) / bins
    accuracy = [correct[which == b].mean() if (which == b).any() else 0 for b in range(bins)]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(centres, accuracy, width=1 / bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence of the top class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {expected_calibration_error(probs, y_true, bins):.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def referral_auc(probs: np.ndarray, y_true: np.ndarray, classes) -> float | None:
    """Return the AUC of the referral rule's score (referral.referral_score) for telling cancers and pre-cancers from
    benign lesions, or None where the split lacks one of the two groups."""
    positive = np.isin(np.asarray(classes)[y_true], concerning(classes))
    if positive.all() or not positive.any():
        return None
    return roc_auc(referral_score(probs, classes), positive)


def plot_roc(probs: np.ndarray, y_true: np.ndarray, classes, path: Path, referral: dict | None = None) -> None:
    """Plot each class's ROC curve against the rest and, where the split holds benign and non-benign photos, the
    referral score's curve for cancers and pre-cancers against benign lesions, with the rule (its threshold and
    referral_scores on this split, as `evaluate` records them) marked."""
    plt = pyplot()
    auc = referral_auc(probs, y_true, classes)
    fig, axes = plt.subplots(1, 1 if auc is None else 2, figsize=(4.8 if auc is None else 9.6, 4.8), squeeze=False)
    for i, code in enumerate(classes):
        positive = y_true == i
        if positive.any() and not positive.all():
            axes[0, 0].plot(*roc_points(probs[:, i], positive), lw=1.2,
                            label=f"{code} {roc_auc(probs[:, i], positive):.3f} ({positive.sum()})")
    axes[0, 0].set_title("each class against the rest (AUC, photos)")
    if auc is not None:
        positive = np.isin(np.asarray(classes)[y_true], concerning(classes))
        ax = axes[0, 1]
        ax.plot(*roc_points(referral_score(probs, classes), positive), color="black", label=f"AUC {auc:.3f}")
        if referral:
            ax.plot(1 - referral["specificity"], referral["sensitivity"], "o", color="crimson",
                    label=f"the rule (>= {referral['threshold']:.3f})")
        ax.set_title(f"{'+'.join(concerning(classes))} against benign: referral")
    for ax in axes[0]:
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        if ax.get_legend_handles_labels()[0]:  # a split of one class has no curve to name
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path, images, y_true: np.ndarray, probs: np.ndarray, classes, extra: dict) -> dict:
    """Write metrics.json, per_class.csv, the plots, predictions.csv and truth.csv; return the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {**summarise(y_true, probs, classes), "referral_auc": referral_auc(probs, y_true, classes), **extra}
    per_class_table(y_true, probs, classes).to_csv(out_dir / "per_class.csv", index_label="class")
    plot_confusion(confusion_matrix(y_true, probs.argmax(1), len(classes)), classes, out_dir / "confusion.png")
    plot_reliability(probs, y_true, out_dir / "reliability.png")
    plot_roc(probs, y_true, classes, out_dir / "roc.png", extra.get("referral"))
    write_submission(out_dir / "predictions.csv", images, probs, classes, columns=classes)
    write_truth(out_dir / "truth.csv", images, y_true, classes)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def resolve_model(path: Path) -> Path:
    """Accept a run folder (its model.pt) or a model file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model not found; pass a run folder with model.pt or a model file")
    return path


def evaluate_model(model_path: Path, prepared_dir: Path, split: str, out_dir: Path | None = None) -> tuple[dict, Path]:
    """Score a saved model (model.pt or an exported .onnx file) on one split of prepared data; write the report."""
    from skinlesion.prepare import load_prepared, photo_hashes, read_summary

    model_path = resolve_model(model_path)
    prepared = load_prepared(prepared_dir)
    rows = prepared.split(split)
    logits, meta = saved_model_logits(model_path, prepared.pixels[rows["cache_row"].to_numpy()])
    classes = meta["classes"]
    unknown = sorted(set(rows["label"]) - set(classes))
    if unknown:
        raise ValueError(f"{prepared_dir}: the {split} split has classes the model lacks: {', '.join(unknown)}")
    if meta["policy"] != prepared.policy:  # the size was checked before the pixels went in (check_model_input)
        raise ValueError(f"{model_path} expects '{meta['policy']}' resized images but {prepared_dir} holds "
                         f"'{prepared.policy}' ones; prepare the data with --resize {meta['policy']}")
    # The paper's protocol shares lesions across splits on purpose, so there only the same photos are left out.
    left_out, seen_check = seen_before(rows, meta, split, by_lesion=prepared.protocol == "lesion",
                                       hashes=photo_hashes(prepared_dir))
    if len(rows) and left_out.all():
        raise ValueError(f"{prepared_dir}: the model met every photo of its {split} split before (in training "
                         f"or validation); score it on a folder prepared with --splits-from its own")
    rows, logits = rows[~left_out], logits[~left_out]
    y_true = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    probs = calibrated(logits, meta)
    # An exported file may sit in the installed package: its report goes to the current folder instead.
    default = Path(f"eval-{model_path.stem}-{split}") if model_path.suffix == ".onnx" else \
        model_path.parent / f"eval-{split}"
    out_dir = Path(out_dir) if out_dir else default
    extra = {"split": split, "model": str(model_path), "prepared": str(prepared_dir), "seen_check": seen_check,
             "temperature": meta["temperature"], "class_bias": list(meta["class_bias"]),
             "ece_uncalibrated": expected_calibration_error(softmax(logits), y_true)}
    threshold = meta["referral"]["threshold"] if meta.get("referral") else None  # exported files since 2026-12-02
    if threshold is not None:
        extra["referral"] = {"threshold": threshold,
                             **referral_scores(probs, rows["label"].to_numpy(), classes, threshold)}
    # By sex, age and body site, from the metadata CSV of the folder the data was prepared from.
    groups, reason = patient_groups_or_reason(read_summary(prepared_dir)["data"])
    subgroups = None if groups is None else subgroup_table(rows["image"], rows["label"], probs, classes, groups,
                                                           threshold)
    extra["subgroups"] = describe_subgroups(subgroups) if subgroups is not None else f"not scored: {reason}"
    metrics = write_report(out_dir, rows["image"], y_true, probs, classes, extra)
    if subgroups is not None:
        subgroups.to_csv(out_dir / "subgroups.csv", index=False, float_format="%.4f")
    return metrics, out_dir


def saved_model_logits(model_path: Path, pixels: np.ndarray) -> tuple[np.ndarray, dict]:
    """Return raw logits (N, K) and the model's metadata: an .onnx file through onnxruntime, else through torch."""
    if model_path.suffix != ".onnx":
        from skinlesion.models import model_logits as torch_logits  # torch only here, when a checkpoint is scored
        return torch_logits(model_path, pixels)
    from skinlesion.predict import Predictor
    predictor = Predictor(model_path)
    check_model_input(model_path, predictor.size, pixels)
    batches = range(0, len(pixels), 32)  # small: an ensemble multiplies the batch by its views (memory)
    # Files exported before class offsets have none; the record of seen photos lives apart from the card.
    card = {"class_bias": [0.0] * len(predictor.classes), **predictor.card, "seen": predictor.seen}
    return np.concatenate([predictor.logits(pixels[i:i + 32]) for i in batches]), card


def read_report(report_dir: Path) -> tuple[pd.Series, pd.DataFrame]:
    """Return an `evaluate` report's labels (truth.csv) and probabilities (predictions.csv), both indexed by image,
    naming a missing or damaged file."""
    tables = {}
    for name in ("truth.csv", "predictions.csv"):
        path = Path(report_dir) / name
        try:
            tables[name] = pd.read_csv(path).set_index("image").astype(float)
        except (OSError, KeyError, ValueError, pd.errors.ParserError) as error:
            raise ValueError(f"{path}: not the {name} of a 'skinlesion evaluate' report ({error})") from None
        if not len(tables[name].columns):
            raise ValueError(f"{path}: no class columns")
    truth, probabilities = tables["truth.csv"], tables["predictions.csv"]
    if not truth.index.equals(probabilities.index):
        raise ValueError(f"{report_dir}: truth.csv and predictions.csv list other images")
    return truth.idxmax(axis=1), probabilities


def paired_reports(report_a: Path, report_b: Path) -> dict:
    """Compare two `evaluate` reports on the same photos: each balanced accuracy, B minus A with its paired 95%
    interval (metrics.paired_difference), each class's recall, how often the two give the same top class, and, where
    both models have the same classes, B minus A in macro AUC and in the referral score's AUC, paired likewise."""
    (truth, probs_a), (truth_b, probs_b) = read_report(report_a), read_report(report_b)
    if set(truth.index) != set(truth_b.index):
        only = sorted(set(truth.index) ^ set(truth_b.index))
        raise ValueError(f"{report_a} and {report_b} scored other photos ({len(only)} in one only, e.g. {only[0]}); "
                         f"evaluate both models on the same prepared folder and split")
    probs_b = probs_b.loc[truth.index]
    if not truth.equals(truth_b.loc[truth.index]):
        raise ValueError(f"{report_a} and {report_b} give the same photos other labels; they come from other data")
    predicted_a, predicted_b = probs_a.idxmax(axis=1), probs_b.idxmax(axis=1)
    classes = sorted(set(truth) | set(predicted_a) | set(predicted_b),
                     key=lambda c: (CODES.index(c) if c in CODES else len(CODES), c))  # ISIC's order first
    index = {c: i for i, c in enumerate(classes)}
    y, pred_a, pred_b = (frame.map(index).to_numpy() for frame in (truth, predicted_a, predicted_b))
    difference, low, high = paired_difference(y, pred_a, pred_b, len(classes))
    recall = {name: {c: float((pred[y == index[c]] == index[c]).mean()) for c in classes if (y == index[c]).any()}
              for name, pred in (("a", pred_a), ("b", pred_b))}
    return {"images": int(len(y)), "bacc_a": balanced_accuracy(y, pred_a, len(classes)),
            "bacc_b": balanced_accuracy(y, pred_b, len(classes)), "difference": difference, "ci95": [low, high],
            "recall_a": recall["a"], "recall_b": recall["b"], "same_top_class": float((pred_a == pred_b).mean()),
            "auc": paired_aucs(truth, probs_a, probs_b)}


def paired_aucs(truth: pd.Series, probs_a: pd.DataFrame, probs_b: pd.DataFrame) -> dict | str:
    """B minus A in macro AUC and in the referral score's AUC (cancers and pre-cancers against benign lesions) on the
    same photos, each with a paired bootstrap interval; a reason where the two models' classes differ."""
    if list(probs_a.columns) != list(probs_b.columns):
        return (f"not compared: the models have other classes ({','.join(probs_a.columns)} against "
                f"{','.join(probs_b.columns)})")
    classes = list(probs_a.columns)
    y = truth.map({c: i for i, c in enumerate(classes)}).to_numpy()
    scores = {"macro AUC": macro_auc}
    if referral_auc(probs_a.to_numpy(), y, classes) is not None:
        scores[f"referral AUC ({'+'.join(concerning(classes))} against benign)"] = \
            lambda labels, probs: referral_auc(probs, labels, classes)
    compared, a, b = {}, probs_a.to_numpy(), probs_b.to_numpy()
    for name, score in scores.items():
        difference, low, high = paired_score_difference(score, y, a, b)
        compared[name] = {"a": score(y, a), "b": score(y, b), "difference": difference, "ci95": [low, high]}
    return compared


def describe_paired(result: dict, report_a: Path, report_b: Path) -> list[str]:
    """Say what paired_reports found, the difference first."""
    low, high = result["ci95"]
    verdict = "B is better" if low > 0 else "A is better" if high < 0 else "no clear difference (the interval holds 0)"
    return [f"A: {report_a}  balanced accuracy {result['bacc_a']:.4f}",
            f"B: {report_b}  balanced accuracy {result['bacc_b']:.4f}",
            f"B - A: {result['difference']:+.4f} (95% interval {low:+.3f} to {high:+.3f}, paired bootstrap within "
            f"classes over {result['images']} photos): {verdict}",
            "recall A -> B: " + "  ".join(f"{c} {result['recall_a'][c]:.3f}->{result['recall_b'][c]:.3f}"
                                          for c in result["recall_a"]),
            f"same top class: {result['same_top_class']:.1%} of photos",
            *([f"AUCs: {result['auc']}"] if isinstance(result["auc"], str) else
              [f"{name}: A {auc['a']:.4f}, B {auc['b']:.4f}, B - A {auc['difference']:+.4f} (95% interval "
               f"{auc['ci95'][0]:+.3f} to {auc['ci95'][1]:+.3f})" for name, auc in result["auc"].items()])]
