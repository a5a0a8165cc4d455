"""The command line: a thin layer that turns options into config dataclasses and library calls."""

from pathlib import Path

import click
import pandas as pd

from skinlesion.classes import parse_codes
from skinlesion.imaging import RESIZE_POLICIES
from skinlesion.referral import REFERRAL_SENSITIVITY
from skinlesion.splits import BALANCE_PRESETS, DEALS, PROTOCOLS, SPLITS


def fail_cleanly(call):
    """Run a library call; turn the errors a user can fix into a clean message and exit 1."""
    from skinlesion.imaging import ImageError
    from skinlesion.isic import DataError
    try:
        return call()
    except (DataError, ImageError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:  # a file or folder that cannot be read or written: name it
        raise click.ClickException(f"{error.filename}: {error.strerror}" if error.filename else str(error)) from None


def check_writable(path: Path) -> None:
    """Fail now, not after every photo has been read, when a result file cannot be written; leave no file behind."""
    existed = path.exists()
    open(path, "a").close()
    if not existed:
        path.unlink()


# Choices of options that training owns are spelled out here, since importing training (torch) would slow every
# command and break `serve` where torch is not installed; tests/test_cli.py checks they match the library.
# train and compare: which validation score keeps a run's epoch (training.SELECT).
select_option = click.option(
    "--select", default="calibrated", show_default=True, type=click.Choice(["calibrated", "top-class"]),
    help="Validation balanced accuracy that keeps the best epoch: of the calibrated decision (cross-fitted on halves "
         "of validation), or of the raw top class (runs before 2026-11-27).")
# prepare and compare: the order in which each class's lesions are dealt into the splits.
deal_option = click.option(
    "--deal", default=DEALS[0], show_default=True, type=click.Choice(DEALS),
    help="random: every split gets its share of lesions, photos and sources; largest-first: the dealing of splits "
         "before 2026-12-02 (the committed figures), which sends lesions with many photos to training.")


@click.group()
@click.version_option(package_name="skinlesion")
def main():
    """Classify dermoscopic photos into the ISIC 2019 diagnoses (a research tool, not a diagnosis)."""


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Folder in the official ISIC 2019 layout (ISIC_2019_Training_Input/ + CSVs).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--balance", "balance_name", default="paper", show_default=True,
              type=click.Choice(list(BALANCE_PRESETS)),
              help="paper: 6 classes undersampled to 867; all: keep every image (balance in training).")
@click.option("--classes", default=None, help="Comma-separated class codes to keep (overrides the preset).")
@click.option("--min-images", type=int, default=None, help="Drop classes with fewer images than this.")
@click.option("--cap", type=int, default=None, help="Undersample larger classes to this many (0 = no cap).")
@click.option("--protocol", default="lesion", show_default=True, type=click.Choice(PROTOCOLS),
              help="lesion: split by lesion, then balance train; paper: balance, then split per image.")
@click.option("--val-fraction", default=0.15, show_default=True)
@click.option("--test-fraction", default=0.15, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=64, show_default=True, help="Cached image side in pixels.")
@click.option("--resize", "policy", default="squash", show_default=True, type=click.Choice(RESIZE_POLICIES),
              help="squash: plain resize (the paper); crop: shorter side + centre crop.")
@click.option("--workers", default=0, show_default=True, help="Decoding processes (0 = one per CPU).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Keep the pixel cache here instead of OUT/cache, so that preparations of the same photos at one "
              "size (cross-validation folds, both protocols) decode them once.")
@click.option("--no-merge-near-duplicates", is_flag=True,
              help="Do not put near-identical images into the same group before splitting.")
@click.option("--splits-from", type=click.Path(path_type=Path), default=None,
              help="Reuse the split of this earlier prepared folder (e.g. the same data at another --size), or "
              "of an exported model.onnx: its training and validation photos as it records them, test = every "
              "photo it never met (photos of lesions it met, or at its input size near-identical in pixels to "
              "one it met, are left unused).")
@click.option("--folds", default=0, show_default=True, help="Cross-validation: deal the groups into this many folds "
              "and make --fold of them the test split (replaces --test-fraction); 0 = one split.")
@click.option("--fold", default=0, show_default=True, help="Which fold (0 to --folds - 1) is the test split.")
@deal_option
def prepare(data_dir, out_dir, balance_name, classes, min_images, cap, protocol, val_fraction, test_fraction,
            seed, size, policy, workers, cache_dir, no_merge_near_duplicates, splits_from, folds, fold, deal):
    """Read ISIC 2019, split by lesion, balance, and cache resized pixels."""
    from dataclasses import replace

    from skinlesion.cache import CacheConfig
    from skinlesion.prepare import PrepareConfig, describe_summary, prepare as run_prepare
    from skinlesion.splits import SplitConfig, balance_preset

    def build():
        balance = balance_preset(balance_name)
        if classes:
            balance = replace(balance, classes=parse_codes(classes))
        if min_images is not None:
            balance = replace(balance, min_images=min_images)
        if cap is not None:
            balance = replace(balance, cap=cap or None)
        split = SplitConfig(protocol, val_fraction, test_fraction, seed, not no_merge_near_duplicates,
                            str(splits_from or ""), folds, fold, deal)
        config = PrepareConfig(balance, split, CacheConfig(size, policy, workers))
        return run_prepare(data_dir, out_dir, config, cache_dir=cache_dir)

    click.echo(describe_summary(fail_cleanly(build), out_dir))


@main.command()
@click.option("--data", "prepared_dir", required=True, type=click.Path(path_type=Path),
              help="A folder written by 'skinlesion prepare'.")
@click.option("--model", "model_name", default="mobilenet_v2", show_default=True,
              help="mobilenet_v2, efficientnet_lite0, resnet50 or alexnet.")
@click.option("--out", "run_dir", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=2e-3, show_default=True, help="Peak learning rate (one-cycle).")
@click.option("--weight-decay", default=0.05, show_default=True)
@click.option("--dropout", default=0.2, show_default=True)
@click.option("--label-smoothing", default=0.1, show_default=True)
@click.option("--width", default=1.0, show_default=True, help="MobileNetV2 width multiplier.")
@click.option("--imbalance", default="none", show_default=True,
              type=click.Choice(["none", "weights", "sampler", "lesion-sampler"]),
              help="How to balance classes the data stage left imbalanced: lesion-sampler also draws every lesion "
                   "of a class equally often, however many photos it has.")
@click.option("--no-pretrained", is_flag=True, help="Train efficientnet_lite0 from scratch too.")
@click.option("--no-augment", is_flag=True)
@click.option("--augmentation", type=click.Choice(["standard", "strong", "ringed", "ringed-casts"]),
              default="standard", show_default=True, help="How to augment: strong adds any rotation, more zoom, "
              "colour casts and a blanked square; ringed paints a round dermatoscope field on 30% of images; "
              "ringed-casts also scales each colour channel by up to 15%, as another dermatoscope's light would.")
@click.option("--patience", default=8, show_default=True, help="Epochs without a better --select score before "
              "stopping.")
@select_option
@click.option("--seed", default=0, show_default=True)
@click.option("--accelerator", default="auto", show_default=True, help="cpu, gpu or auto.")
@click.option("--devices", default="auto", show_default=True, help="Devices per node; more than one uses DDP.")
@click.option("--num-nodes", default=1, show_default=True)
@click.option("--limit-train-batches", default=1.0, show_default=True, help="Fraction (or count) of batches.")
@click.option("--init", "init_model", type=click.Path(path_type=Path), default=None,
              help="Start from this model.pt (same model and classes, e.g. trained at a smaller size).")
@click.option("--mixup", default=0.0, show_default=True, help="Blend pairs of training images and their labels "
              "(Beta concentration, e.g. 0.2); 0 = off.")
@click.option("--ema", default=0.0, show_default=True, help="Validate and keep an exponential moving average of "
              "the weights with this decay per batch (e.g. 0.995); 0 = off.")
@click.option("--color-constancy", default=0.0, show_default=True, help="Grey the light of every photo inside the "
              "network (shades of gray with this power, e.g. 6), so training and serving do the same; 0 = off.")
@click.option("--drop-path", default=0.0, show_default=True, help="Stochastic depth (efficientnet_lite0): skip "
              "each residual block in training at a rate rising over the blocks to about this; 0 = off.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
def train(prepared_dir, model_name, run_dir, epochs, batch_size, lr, weight_decay, dropout, label_smoothing, width,
          imbalance, no_pretrained, no_augment, patience, select, seed, accelerator, devices, num_nodes,
          limit_train_batches, init_model, mixup, ema, color_constancy, augmentation, drop_path, resume):
    """Train a model on a prepared data set; write checkpoints, epochs.csv and model.pt to --out."""
    from skinlesion.models import model_spec
    from skinlesion.training import TrainConfig, fit

    def run():
        model_spec(model_name)
        limit = int(limit_train_batches) if limit_train_batches > 1 else limit_train_batches
        config = TrainConfig(model_name, width, not no_pretrained, epochs, batch_size, lr, weight_decay, dropout,
                             label_smoothing, imbalance, not no_augment, patience, seed, accelerator, str(devices),
                             num_nodes, limit, str(init_model or ""), select, mixup, ema, color_constancy,
                             augmentation, drop_path)
        return fit(prepared_dir, run_dir, config, resume=resume)

    out = fail_cleanly(run)
    click.echo(f"model written to {out}")


@main.command()
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--data", "prepared_dir", required=True, type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, type=click.Choice(SPLITS))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Report folder (default: RUN/eval-SPLIT next to the model; eval-NAME-SPLIT here for NAME.onnx).")
def evaluate(model_path, prepared_dir, split, out_dir):
    """Score a run, model.pt or exported .onnx file on one split: balanced accuracy first, then the rest."""
    from skinlesion.evaluate import evaluate_model
    from skinlesion.metrics import describe_metrics
    from skinlesion.referral import describe_referral

    metrics, out_dir = fail_cleanly(lambda: evaluate_model(model_path, prepared_dir, split, out_dir))
    click.echo(describe_metrics(metrics))
    if metrics["referral_auc"] is not None:
        click.echo(f"cancers and pre-cancers against benign lesions, by the referral score: AUC "
                   f"{metrics['referral_auc']:.4f} (roc.png)")
    if "referral" in metrics:
        click.echo(describe_referral(metrics["referral"]["threshold"], metrics["referral"], list(metrics["recall"])))
    subgroups = metrics["subgroups"]
    click.echo("\n".join(subgroups) if isinstance(subgroups, list) else f"by sex, age and site: {subgroups}")
    click.echo(metrics["seen_check"])
    click.echo(f"report: {out_dir}")


@main.command()
@click.argument("report_a", type=click.Path(path_type=Path))
@click.argument("report_b", type=click.Path(path_type=Path))
def paired(report_a, report_b):
    """Is model B better than A? Two 'evaluate' reports on the same photos, by a paired bootstrap."""
    from skinlesion.evaluate import describe_paired, paired_reports

    click.echo("\n".join(describe_paired(fail_cleanly(lambda: paired_reports(report_a, report_b)), report_a, report_b)))


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Folder for the model.pt.")
@click.option("--data", "prepared_dir", type=click.Path(path_type=Path), default=None,
              help="Prepared data whose validation split calibrates it (default: the first run's).")
@click.option("--views", type=click.Choice(["1", "2", "4", "8"]), default="1", show_default=True,
              help="Show every network this many turned/mirrored copies of the image and average them too.")
def ensemble(runs, out_dir, prepared_dir, views):
    """Average runs' (and views') calibrated probabilities into one model; evaluate and export it like a run."""
    from skinlesion.ensemble import build_ensemble

    out, scores = fail_cleanly(lambda: build_ensemble(list(runs), out_dir, prepared_dir, int(views)))
    members = "  ".join(f"{score:.4f}" for score in scores["members_val_bacc"])
    click.echo(f"validation balanced accuracy: ensemble {scores['val_bacc']:.4f} (top class), "
               f"{scores['val_bacc_calibrated']:.4f} (calibrated for equally common classes, cross-fitted on halves); "
               f"members' best epochs {members}")
    click.echo(f"model written to {out}")


@main.command()
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The .onnx file to write.")
@click.option("--data", "prepared_dir", type=click.Path(path_type=Path), default=None,
              help="Prepared data for the parity check (default: the one the model was trained on).")
@click.option("--fp16", is_flag=True, help="Store the weights as float16 (half the file) and score the file on "
              "the validation split against PyTorch.")
@click.option("--card", "card_path", type=click.Path(path_type=Path), default=None,
              help="Also write a markdown model card rendered from the model's metadata.")
@click.option("--referral-sensitivity", type=float, default=REFERRAL_SENSITIVITY,
              show_default=True, help="Share of the validation split's cancers and pre-cancers the referral rule "
              "must send to a dermatologist; its threshold is fitted for it.")
def export(model_path, out, prepared_dir, fp16, card_path, referral_sensitivity):
    """Export a run or model.pt to ONNX with its metadata, checked against PyTorch on real images."""
    from skinlesion.card import write_model_card
    from skinlesion.export import describe_export, export_with_checks

    report = fail_cleanly(lambda: export_with_checks(model_path, out, prepared_dir, fp16, referral_sensitivity))
    click.echo("\n".join(describe_export(report)))
    if card_path:
        click.echo(f"model card: {write_model_card(out, card_path)}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="An .onnx file from 'skinlesion export' (default: the bundled model).")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Write a CSV instead of a table: by default an ISIC submission "
              "(image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC).")
@click.option("--format", "output_format", type=click.Choice(["isic2019", "isic2019-unk", "isic2018", "assessments"]),
              default="isic2019", show_default=True, help="Columns of the --output CSV; isic2019-unk adds the ISIC "
              "2019 test set's UNK (none of the others) as 0; isic2018: MEL,NV,BCC,AKIEC,BKL,DF,VASC; assessments: "
              "the web app's answer (label, probability, risk, uncertain, refer, concern, seen_by_model) and the "
              "eight probabilities.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Photos per onnxruntime call.")
@click.option("--heatmaps", "heatmap_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write each photo's heatmap (where the model looked for its top class, as the web page shows "
              "it) to this folder as NAME.heatmap.png.")
def predict(inputs, model_path, output, output_format, batch_size, heatmap_dir):
    """Classify image files and folders (a research tool, not a diagnosis)."""
    from skinlesion.predict import OUTPUT_COLUMNS, Predictor, image_files, prediction_notes

    if output_format != "isic2019" and not output:
        raise click.UsageError(f"--format {output_format} sets the columns of the --output CSV; add --output FILE")
    predictor = fail_cleanly(lambda: Predictor(model_path))
    if output:
        fail_cleanly(lambda: check_writable(output))

    def run():
        files, problems = image_files(list(inputs))
        rows, failed = predictor.predict_files(files, batch_size, heatmap_dir)
        return rows, problems + failed

    rows, problems = fail_cleanly(run)
    for problem in problems:
        click.echo(f"skipped {problem['path']}: {problem['problem']}", err=True)
    if not rows:  # a mistyped folder must not pass for an empty result
        raise click.ClickException(f"no readable image among {len(inputs)} input(s); nothing predicted or written")
    if output:
        frame = pd.DataFrame([{"image": row.image, **predictor.output_row(row, output_format)} for row in rows],
                             columns=["image", *OUTPUT_COLUMNS[output_format]])
        fail_cleanly(lambda: frame.to_csv(output, index=False, float_format="%.6f"))
        click.echo(f"wrote {len(rows)} predictions to {output}")
    else:
        for row in rows:
            click.echo(predictor.table_row(row))
    if heatmap_dir:
        refused = sum(1 for row in rows if row.cannot_assess)
        click.echo(f"wrote {len(rows) - refused} heatmaps to {heatmap_dir}"
                   + (f" (none for the {refused} photos the web app would not assess)" if refused else ""))
    for note in prediction_notes(rows, output, output_format):
        click.echo(note, err=True)
    click.echo("Research tool, not a diagnosis: see a dermatologist about any lesion that worries you.", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="gunicorn worker processes.")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help="An .onnx file from 'skinlesion export' (default: the bundled model).")
@click.option("--dev", is_flag=True, help="Use Flask's development server instead of gunicorn.")
def serve(host, port, workers, model_path, dev):
    """Serve the web page and the JSON API (gunicorn by default)."""
    from skinlesion.predict import Predictor
    from skinlesion.web import settings_from_environment
    from skinlesion.web.server import serve as run_server

    # A bad setting or a missing or wrong model fails here with its name, not in a restart loop of every worker.
    settings = fail_cleanly(settings_from_environment)
    fail_cleanly(lambda: Predictor(model_path or settings["MODEL"]))
    click.echo(f"serving on http://{host}:{port}  (research tool, not a diagnosis)")
    run_server(host, port, workers, str(model_path) if model_path else None, dev)


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Official ISIC layout.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Work folder (resumable).")
@click.option("--report", "report_path", default=Path("docs/comparison.md"), show_default=True,
              type=click.Path(path_type=Path))
@click.option("--models", default="mobilenet_v2,efficientnet_lite0,resnet50,alexnet", show_default=True)
@click.option("--protocols", default="lesion,paper", show_default=True)
@click.option("--size", default=64, show_default=True)
@click.option("--extra-sizes", default="128", show_default=True, help="Sizes tried for the best model ('' for none).")
@click.option("--epochs", default=10, show_default=True)
@click.option("--seed", default=0, show_default=True)
@select_option
@deal_option
def compare(data_dir, out_dir, report_path, models, protocols, size, extra_sizes, epochs, seed, select, deal):
    """Train and compare the four models under the lesion and the paper protocol; write a report."""
    import sys

    from skinlesion.compare import CompareConfig, compare as run_compare
    from skinlesion.report import write_comparison_report

    def run():
        names = tuple(m.strip() for m in models.split(",") if m.strip())
        texts = [s.strip() for s in extra_sizes.split(",") if s.strip()]
        if not all(text.isdigit() for text in texts):
            raise ValueError(f"--extra-sizes {extra_sizes!r}: give sizes in pixels separated by commas, e.g. 128,192")
        config = CompareConfig(names, tuple(p.strip() for p in protocols.split(",") if p.strip()), size,
                               tuple(map(int, texts)), epochs, 64, seed, select, deal)
        run_compare(data_dir, out_dir, config)
        return write_comparison_report(out_dir, report_path, "skinlesion " + " ".join(sys.argv[1:]))

    click.echo(f"report: {fail_cleanly(run)}")
