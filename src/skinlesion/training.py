"""Training: a Lightning system (loss, metrics, optimiser) around an injected model, over the prepared cache."""

import csv
import json
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from skinlesion.calibration import cross_fitted_balanced_accuracy, fit_calibration
from skinlesion.metrics import balanced_accuracy
from skinlesion.models import create_model, model_spec, predict_logits, save_model
from skinlesion.prepare import load_prepared
from skinlesion.presets import AUGMENTATIONS, EvalPreset
from skinlesion.runs import check_same_run, prepared_digest, start_from
from skinlesion.splits import class_weights, sampler_weights

IMBALANCE = ("none", "weights", "sampler", "lesion-sampler")
# What chooses the kept epoch and stops training: the calibrated decision the model ships with, or (runs before
# 2026-11-27, e.g. the bundled model's members) the top class of the raw logits.
SELECT = {"calibrated": "val_bacc_calibrated", "top-class": "val_bacc"}
# Augmenting in the system's on_after_batch_transfer, beside a DataModule, is deliberate.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "mobilenet_v2"
    width: float = 1.0  # MobileNet width multiplier
    pretrained: bool = True  # only efficientnet_lite0 has offline ImageNet weights
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 0.05  # AdamW's decoupled decay
    dropout: float = 0.2  # before the classifier
    label_smoothing: float = 0.1
    imbalance: str = "none"  # "weights", "sampler" or "lesion-sampler" when the data kept every image (--balance all)
    augment: bool = True
    patience: int = 8  # epochs without a better selection score (see select) before stopping
    seed: int = 0
    accelerator: str = "auto"
    devices: str = "auto"  # e.g. "4" for four GPUs; more than one uses DDP
    num_nodes: int = 1
    limit_train_batches: float = 1.0  # fraction (or count, if > 1) of batches per epoch; for quick checks
    init: str = ""  # a model.pt to start from (e.g. the same network trained at a smaller size)
    select: str = "calibrated"  # a key of SELECT
    mixup: float = 0.0  # Beta(a, a) concentration for blending pairs of training images; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and kept; 0 = off
    color_constancy: float = 0.0  # shades-of-gray power inside the network (6 as the ISIC 2019 winners); 0 = off
    augmentation: str = "standard"  # a key of presets.AUGMENTATIONS, used when augment is on
    drop_path: float = 0.0  # stochastic depth (efficientnet_lite0): blocks skipped in training up to this rate; 0 = off

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "width", "limit_train_batches"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "dropout", "label_smoothing", "drop_path"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 0 and below 1, got {getattr(self, name)}")
        if self.imbalance not in IMBALANCE:
            raise ValueError(f"unknown imbalance option {self.imbalance!r}; choose from {', '.join(IMBALANCE)}")
        if self.select not in SELECT:
            raise ValueError(f"unknown selection {self.select!r}; choose from {', '.join(SELECT)}")
        if self.mixup < 0:
            raise ValueError(f"mixup must be 0 (off) or positive, got {self.mixup}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be 0 (off) or a decay below 1, got {self.ema}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; choose from {', '.join(AUGMENTATIONS)}")
        if self.color_constancy and self.color_constancy < 1:
            raise ValueError(f"color_constancy must be 0 (off) or a power of at least 1, got {self.color_constancy}")


class PreparedData(L.LightningDataModule):
    """Train and validation batches of cached uint8 pixels; augmentation happens later, batched."""

    def __init__(self, prepared_dir: Path, batch_size: int, imbalance: str, seed: int):
        super().__init__()
        self.prepared = load_prepared(prepared_dir)
        self.batch_size, self.imbalance, self.seed = batch_size, imbalance, seed

    def tensors(self, split: str) -> TensorDataset:
        rows = self.prepared.split(split)
        if rows.empty:
            raise ValueError(f"{self.prepared.out_dir}: the {split} split is empty")
        index = {c: i for i, c in enumerate(self.prepared.classes)}
        pixels = torch.from_numpy(np.ascontiguousarray(self.prepared.pixels[rows["cache_row"].to_numpy()]))
        return TensorDataset(pixels, torch.tensor(rows["label"].map(index).to_numpy()))  # (N, H, W, 3), (N,)

    def train_dataloader(self) -> DataLoader:
        data = self.tensors("train")
        if self.imbalance in ("sampler", "lesion-sampler"):
            train = self.prepared.split("train")
            weights = sampler_weights(train["label"], train["group"] if self.imbalance == "lesion-sampler" else None)
            generator = torch.Generator().manual_seed(self.seed)
            sampler = WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)
            return DataLoader(data, self.batch_size, sampler=sampler, drop_last=True)
        return DataLoader(data, self.batch_size, shuffle=True, drop_last=len(data) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.tensors("val"), self.batch_size * 2)

    def loss_weights(self) -> list[float] | None:
        if self.imbalance != "weights":
            return None
        return class_weights(self.prepared.split("train")["label"], self.prepared.classes).tolist()


class LesionSystem(L.LightningModule):
    """Loss, metrics and optimiser; the network itself comes from the model registry."""

    def __init__(self, config: dict, classes: list[str], size: int, policy: str, loss_weights=None):
        super().__init__()
        self.save_hyperparameters()
        self.config = TrainConfig(**config)
        self.model = create_model(self.config.model, len(classes), self.config.pretrained, self.config.width,
                                  self.config.dropout, self.config.color_constancy, self.config.drop_path)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.train_preset = AUGMENTATIONS[self.config.augmentation] if self.config.augment else EvalPreset()
        self.eval_preset = EvalPreset()
        self.register_buffer("loss_weights", torch.tensor(loss_weights) if loss_weights else None)
        # The averaged weights (buffers too: BatchNorm statistics) are what validation scores and fit() keeps.
        self.ema = None
        if self.config.ema:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema), use_buffers=True)
            self.ema.requires_grad_(False)
        self.val_outputs = []

    def kept_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def on_after_batch_transfer(self, batch, dataloader_idx):
        pixels, labels = batch
        preset = self.train_preset if self.trainer.training else self.eval_preset
        return preset(pixels), labels

    def training_step(self, batch, batch_idx):
        x, y = batch
        if not self.config.mixup:
            loss = self.loss(self.model(x), y)
        else:  # mixup: a blend of two images is trained toward the same blend of their labels
            share = torch.distributions.Beta(self.config.mixup, self.config.mixup).sample().to(x.device)
            partner = torch.randperm(len(x), device=x.device)
            logits = self.model(share * x + (1 - share) * x[partner])
            loss = share * self.loss(logits, y) + (1 - share) * self.loss(logits, y[partner])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def loss(self, logits, y):
        return F.cross_entropy(logits, y, weight=self.loss_weights, label_smoothing=self.config.label_smoothing)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.kept_model()(x)
        self.log("val_loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        self.val_outputs.append((logits.float(), y))

    def on_validation_epoch_end(self):
        logits = torch.cat([o[0] for o in self.val_outputs])
        labels = torch.cat([o[1] for o in self.val_outputs])
        self.val_outputs.clear()
        logits, labels = self.all_gather(logits).flatten(0, -2), self.all_gather(labels).flatten()
        logits, labels = logits.cpu().numpy(), labels.cpu().numpy()
        self.log("val_bacc", balanced_accuracy(labels, logits.argmax(1), len(self.hparams.classes)), prog_bar=True)
        # Both are logged; config.select names the one that keeps the epoch (see fit()).
        self.log("val_bacc_calibrated", cross_fitted_balanced_accuracy(logits, labels), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.config.lr,
                                                       total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class EpochLog(L.Callback):
    """Append one CSV row per epoch: the log survives interruption and grows on resume."""

    def __init__(self, path: Path):
        self.path, self.started = path, time.perf_counter()

    def on_train_start(self, trainer, system):
        # On resume, forget rows of epochs that the checkpoint does not hold (killed before it was saved).
        if self.path.exists() and trainer.is_global_zero:
            self.write([r for r in self.read() if int(r["epoch"]) < trainer.current_epoch])

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def write(self, rows: list[dict]) -> None:
        """Rewrite the whole (small) log, so a log from an older version gains new columns cleanly."""
        columns = list(dict.fromkeys(key for row in rows for key in row))
        partial = self.path.with_suffix(".partial")
        with partial.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        partial.replace(self.path)  # atomic: a power cut leaves the old log or the new one

    def append(self, row: dict) -> None:
        self.write(self.read() + [row])

    def on_train_epoch_start(self, trainer, system):
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, system):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": trainer.current_epoch, "train_loss": metrics.get("train_loss"),
               "val_loss": metrics.get("val_loss"), "val_bacc": metrics.get("val_bacc"),
               "val_bacc_calibrated": metrics.get("val_bacc_calibrated"),
               "lr": trainer.optimizers[0].param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - self.started, 1)}
        self.append(row)


def trained_with(device: torch.device) -> dict:
    """Return the software and hardware a run was trained with, for its record and its model card."""
    from importlib.metadata import PackageNotFoundError, version
    found = {"python": platform.python_version()}
    for package in ("skinlesion", "torch", "torchvision", "timm", "lightning", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    found["device"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                       else f"{device.type} ({os.cpu_count()} cores)")
    return found


def fit(prepared_dir: Path, run_dir: Path, config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train, keep the best epoch by validation balanced accuracy (config.select), calibrate on it; return model.pt."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists() and not resume:
        raise ValueError(f"{run_dir} already holds a training run; pass --resume to continue it "
                         "or choose another --out")
    if resume and not last.exists():
        raise ValueError(f"{last}: nothing to resume; start without --resume")
    if resume:
        check_same_run(run_dir, Path(prepared_dir), config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = PreparedData(prepared_dir, config.batch_size, config.imbalance, config.seed)
    prepared = data.prepared
    if prepared.size < model_spec(config.model).min_size:
        raise ValueError(f"{config.model} needs inputs of at least {model_spec(config.model).min_size} px but "
                         f"{prepared_dir} holds {prepared.size} px; prepare with a larger --size")
    system = LesionSystem(asdict(config), list(prepared.classes), prepared.size, prepared.policy, data.loss_weights())
    if config.init and not resume:
        start_from(system.model, Path(config.init), config, prepared)
    run_dir.mkdir(parents=True, exist_ok=True)  # after every check that can refuse the run: no empty folder left
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(run_dir / "checkpoints", filename="best", mode="max",
                                                      monitor=SELECT[config.select])
    # Every epoch, whatever its score, so --resume loses no finished epoch (Lightning's save_last only writes
    # when the best checkpoint does).
    latest = L.pytorch.callbacks.ModelCheckpoint(run_dir / "checkpoints", filename="last")
    stopper = L.pytorch.callbacks.EarlyStopping(SELECT[config.select], mode="max", patience=config.patience)
    devices = int(config.devices) if config.devices.isdigit() else config.devices
    distributed = (isinstance(devices, int) and devices > 1) or config.num_nodes > 1
    trainer = L.Trainer(max_epochs=config.epochs, accelerator=config.accelerator, devices=devices,
                        num_nodes=config.num_nodes, strategy="ddp" if distributed else "auto",
                        callbacks=[checkpoints, latest, stopper, EpochLog(run_dir / "epochs.csv")], logger=False,
                        enable_progress_bar=progress, enable_model_summary=False,
                        limit_train_batches=config.limit_train_batches, num_sanity_val_steps=0)
    (run_dir / "train_config.json").write_text(json.dumps({"prepared": str(prepared_dir),
                                                          "prepared_digest": prepared_digest(Path(prepared_dir)),
                                                          **asdict(config)}, indent=1))
    trainer.fit(system, datamodule=data, ckpt_path=last if resume else None)
    if not trainer.is_global_zero:
        return run_dir / "model.pt"
    best = LesionSystem.load_from_checkpoint(checkpoints.best_model_path or last, map_location="cpu")
    model = best.kept_model().eval()
    val = data.tensors("val")
    logits, y_val = predict_logits(model, val.tensors[0]), val.tensors[1].numpy()
    temperature, class_bias = fit_calibration(logits, y_val)
    scores = {"val_bacc": balanced_accuracy(y_val, logits.argmax(1), len(prepared.classes)),
              "val_bacc_calibrated": cross_fitted_balanced_accuracy(logits, y_val)}
    out = run_dir / "model.pt"
    save_model(model, out, name=config.model, classes=prepared.classes, size=prepared.size, policy=prepared.policy,
               width=config.width, dropout=config.dropout, temperature=temperature, class_bias=class_bias,
               extra={**scores, "epochs_trained": trainer.current_epoch, "train_config": asdict(config),
                      "prepared": str(prepared_dir), "trained_with": trained_with(trainer.strategy.root_device)})
    return out
