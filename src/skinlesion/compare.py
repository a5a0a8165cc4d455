"""The paper's comparison: four models under one protocol, the paper's leaky protocol beside it, input sizes."""

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from skinlesion.cache import CacheConfig
from skinlesion.evaluate import evaluate_model
from skinlesion.models import MODELS, load_model, model_spec
from skinlesion.prepare import PrepareConfig, prepare
from skinlesion.splits import BALANCE_PRESETS, SplitConfig
from skinlesion.training import TrainConfig, fit


@dataclass(frozen=True)
class CompareConfig:
    models: tuple[str, ...] = tuple(MODELS)
    protocols: tuple[str, ...] = ("lesion", "paper")
    size: int = 64  # the paper's input size
    extra_sizes: tuple[int, ...] = (128,)  # tried for the best model, lesion protocol only
    epochs: int = 10  # sized so the whole comparison fits about two hours on 2 CPU cores
    batch_size: int = 64
    seed: int = 0
    select: str = "calibrated"  # the validation score that keeps each run's epoch (training.SELECT)
    deal: str = "random"  # the order lesions are dealt into splits (splits.DEALS)

    def __post_init__(self):
        """Build every run's settings once, so a bad one fails before the first run, which may train for an hour."""
        if not self.models or not self.protocols:
            raise ValueError("compare needs at least one model and one protocol")
        for name in self.models:
            model_spec(name)
            self.train_config(name)
        for protocol in self.protocols:
            SplitConfig(protocol=protocol, seed=self.seed, deal=self.deal)
        for size in (self.size, *self.extra_sizes):
            CacheConfig(size=size)

    def train_config(self, model: str) -> TrainConfig:
        """The one recipe every run of the comparison trains with (all epochs run: patience is the epoch count)."""
        return TrainConfig(model=model, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed,
                           patience=self.epochs, select=self.select)


def prepared_dir(out: Path, protocol: str, size: int) -> Path:
    return out / "prepared" / f"{protocol}-{size}"


def run_one(data_dir: Path, out: Path, model: str, protocol: str, size: int, config: CompareConfig) -> dict:
    """Prepare (cached), train (resumable) and score one model; return its row of the results table."""
    data = prepared_dir(out, protocol, size)
    base = prepared_dir(out, protocol, config.size)
    if not (data / "prepared.json").exists():
        # Other sizes reuse the base size's split, so every size is scored on the same test images.
        split = SplitConfig(protocol=protocol, seed=config.seed, splits_from=str(base) if data != base else "",
                            deal=config.deal)
        prepare(data_dir, data, PrepareConfig(balance=BALANCE_PRESETS["paper"], split=split,
                                              cache=CacheConfig(size=size)), progress=False,
                cache_dir=out / "cache")  # one pixel cache per size, shared by both protocols
    run = out / "runs" / f"{protocol}-{model}-{size}"
    train = config.train_config(model)
    started = time.perf_counter()
    if not (run / "model.pt").exists():
        fit(data, run, train, resume=(run / "checkpoints" / "last.ckpt").exists(), progress=False)
    seconds = time.perf_counter() - started
    network, meta = load_model(run / "model.pt")
    if "val_bacc_calibrated" not in meta:  # older runs: no class offsets, epochs kept by the top class
        raise ValueError(f"{run}: trained before 2026-11-27, without calibration for equally common classes; "
                         f"compare into a new --out")
    kept_by = meta["train_config"].get("select", "calibrated")  # calibrated runs from before --select existed
    if kept_by != config.select:
        raise ValueError(f"{run}: kept its epoch by --select {kept_by}, not {config.select}; compare into a new --out")
    val, _ = evaluate_model(run, data, "val")
    test, _ = evaluate_model(run, data, "test")
    leakage = leakage_effect(data, run / "eval-test") if protocol == "paper" else {}
    row = {"model": model, "protocol": protocol, "size": size, "val_bacc": val["balanced_accuracy"],
           "test_bacc": test["balanced_accuracy"], "test_accuracy": test["accuracy"],
           "test_macro_auc": test["macro_auc"],
           "test_ece": test["ece"], "test_ece_class_balanced": test["ece_class_balanced"],
           **{f"recall_{c}": r for c, r in test["recall"].items()},
           "params_m": sum(p.numel() for p in network.parameters()) / 1e6,
           "file_mb": (run / "model.pt").stat().st_size / 1e6, "cpu_latency_ms": cpu_latency_ms(network, size),
           **leakage, "epochs_trained": meta.get("epochs_trained"), "train_seconds_this_call": round(seconds),
           "command": f"skinlesion train --data {data} --model {model} --epochs {config.epochs} "
                      f"--batch-size {config.batch_size} --seed {config.seed} --patience {config.epochs} "
                      f"--select {config.select} --out {run}"}
    print(f"{protocol:6s} {model:18s} {size:4d}px  val bacc {row['val_bacc']:.3f}  test bacc {row['test_bacc']:.3f}",
          flush=True)
    return row


def leaked_test_images(splits: pd.DataFrame) -> pd.Series:
    """For each test image, whether a photo of its lesion (or a near duplicate of it) is in the training split."""
    train_groups = set(splits.loc[splits["split"] == "train", "group"])
    test = splits[splits["split"] == "test"]
    return pd.Series(test["group"].isin(train_groups).to_numpy(), index=test["image"].to_numpy())


def leakage_effect(prepared: Path, eval_dir: Path) -> dict:
    """Score one model's test predictions separately on leaked and clean test images.

    Recall is compared within each class and then averaged over the classes that have both kinds of image, so a
    different class mix among leaked images cannot pass for memorisation.
    """
    leaked = leaked_test_images(pd.read_csv(Path(prepared) / "splits.csv"))
    truth = pd.read_csv(Path(eval_dir) / "truth.csv", index_col="image")
    predictions = pd.read_csv(Path(eval_dir) / "predictions.csv", index_col="image").loc[truth.index, truth.columns]
    table = pd.DataFrame({"label": truth.idxmax(axis=1),
                          "correct": predictions.to_numpy().argmax(1) == truth.to_numpy().argmax(1),
                          "leaked": leaked.reindex(truth.index, fill_value=False)})
    recall = table.groupby(["label", "leaked"])["correct"].mean().unstack().reindex(columns=[False, True]).dropna()
    clean, leaky = recall[False].mean(), recall[True].mean()
    return {"test_leaked_share": float(table["leaked"].mean()), "test_recall_leaked": float(leaky),
            "test_recall_clean": float(clean), "leak_gain": float(leaky - clean), "leak_classes": len(recall)}


@torch.inference_mode()
def cpu_latency_ms(model, size: int, repeats: int = 20) -> float:
    """Best of `repeats` single-image forward passes in PyTorch on this CPU (the minimum shrugs off other load)."""
    x = torch.rand(1, 3, size, size).mul(255).contiguous(memory_format=torch.channels_last)
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return float(min(times) * 1000)


def compare(data_dir: Path, out: Path, config: CompareConfig) -> pd.DataFrame:
    """Run every model under every protocol, then the best model at larger sizes; write results.csv."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()} CPU cores" + (f" and a {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
                                                 else "")
    (out / "compare_config.json").write_text(json.dumps({**asdict(config), "machine": machine}, indent=1))
    rows = [run_one(data_dir, out, m, p, config.size, config) for p in config.protocols for m in config.models]
    results = pd.DataFrame(rows)
    honest = results[results["protocol"] == "lesion"]
    if not honest.empty and config.extra_sizes:
        best = honest.sort_values("val_bacc", ascending=False)["model"].iloc[0]
        rows += [run_one(data_dir, out, best, "lesion", s, config) for s in config.extra_sizes]
    results = pd.DataFrame(rows)
    results.to_csv(out / "results.csv", index=False)
    return results
