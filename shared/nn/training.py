"""Sequential training of 3D-CDI-NN, as in the paper, with exact resume.

    SCHEDULE = shape → strain → joint
      shape : encoder + amplitude decoder learn the crystal's shape   (amplitude loss)
      strain: phase decoder learns the strain, encoder frozen           (+ phase and Fourier loss)
      joint : everything trainable, all terms, lower learning rate

An epoch is ``steps_per_epoch`` batches; after each one the weights, optimizer
state and progress are checkpointed (every few minutes on a 2-core CPU), so a
killed run resumes exactly where it stopped.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from shared import plots
from shared.nn import network
from shared.nn.data import ShardBatches, load_shards
from shared.nn.loss import cdi_loss


@dataclass
class Stage:
    name: str
    epochs: int
    trainable: tuple[str, ...]  # layer-name prefixes
    weights: tuple[float, float, float]  # amplitude, phase, Fourier
    learning_rate: float


STAGES = {
    "shape": lambda n: Stage("shape", n, ("enc", "latent", "amp"), (1.0, 0.0, 0.0), 1e-3),
    "strain": lambda n: Stage("strain", n, ("pha",), (1.0, 5.0, 2.0), 1e-3),
    "joint": lambda n: Stage("joint", n, ("enc", "latent", "amp", "pha"), (1.0, 5.0, 2.0), 3e-4),
}
# the joint stage at a tenth of its rate: fine-tuned weights jump between epochs at 3e-4, and settle here
STAGES["settle"] = lambda n: replace(STAGES["joint"](n), name="settle",
                                     learning_rate=STAGES["joint"](n).learning_rate / 10)


def parse_schedule(text: str) -> list[Stage]:
    """'shape=4,strain=3,joint=10' → stages with those epoch counts."""
    stages = []
    for part in text.split(","):
        name, _, count = part.partition("=")
        if name.strip() not in STAGES or not count.strip().isdigit():
            raise ValueError(f"schedule part {part!r}: use NAME=EPOCHS with NAME in {', '.join(STAGES)}")
        stages.append(STAGES[name.strip()](int(count)))
    return stages


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    width: int = 16
    dropout: float = 0.1
    batch_size: int = 16
    steps_per_epoch: int = 100
    schedule: str = "shape=4,strain=3,joint=10"
    validation_fraction: float = 0.05
    seed: int = 0
    partial_probability: float = 0.5
    flaw_probability: float = 0.0  # share of scans with a module gap and dead pixels, inpainted (shared.nn.data)
    precision: str = "float32"
    friedel: bool = True  # Friedel-difference input channel (shared.nn.network)
    twin: str = "canonical"  # canonical targets, or "min": twin-invariant loss (shared.nn.loss)
    init: str = ""  # weights to start from (fine-tuning), used only when no checkpoint exists
    extra: dict = field(default_factory=dict)


class PhysicsAwareTrainer(keras.Model):
    """Wraps the network; its loss needs targets and the measured magnitude together."""

    def __init__(self, net, loss_weights, twin_invariant=False, **kwargs):
        super().__init__(**kwargs)
        self.net, self.loss_weights_, self.twin_invariant = net, loss_weights, twin_invariant
        self.trackers = {k: keras.metrics.Mean(name=k) for k in ("loss", "amplitude", "phase", "fourier")}

    def call(self, x, training=False):
        return self.net(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total, terms = cdi_loss(y_pred["amplitude"], y_pred["phase"], y["amplitude"], y["phase"],
                                y["magnitude"], self.loss_weights_, self.twin_invariant)
        self.trackers["loss"].update_state(total)
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return total

    @property
    def metrics(self):
        return list(self.trackers.values())


def reseed_dropout(net, seed: int) -> None:
    """Put every layer's random stream at a state fixed by ``seed`` (dropout masks resume exactly)."""
    for k, layer in enumerate(net.layers):
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            generator.state.assign(keras.ops.cast([seed, k], generator.state.dtype))


def set_trainable(net, prefixes):
    for layer in net.layers:
        layer.trainable = layer.name.startswith(tuple(prefixes)) or not layer.weights


class Checkpoint:
    """Weights + optimizer state + progress in one folder, written atomically."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state_file = folder / "state.json"

    def load_state(self) -> dict | None:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else None

    def save(self, net, optimizer, state: dict):
        tmp = self.folder / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        net.save_weights(tmp / "net.weights.h5")
        np.savez(tmp / "optimizer.npz", *[np.asarray(v) for v in optimizer.variables])
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        for name in ("net.weights.h5", "optimizer.npz", "state.json"):  # state.json last: it commits
            os.replace(tmp / name, self.folder / name)

    def restore_weights(self, net):
        net.load_weights(self.folder / "net.weights.h5")

    def restore_optimizer(self, optimizer, trainable_variables):
        optimizer.build(trainable_variables)
        saved = np.load(self.folder / "optimizer.npz")
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        if len(values) == len(optimizer.variables):
            for variable, value in zip(optimizer.variables, values):
                variable.assign(value)


class BatchProgress(keras.callbacks.Callback):
    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs:
            self.bar.set_postfix({k: f"{float(v):.4f}" for k, v in logs.items()}, refresh=False)


def plot_log(log_path: Path, png: Path) -> None:
    """Validation loss terms against epoch (log scale), from log.csv."""
    with log_path.open() as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(r["global_epoch"]) for r in rows]
    series = {name: [float(r.get(f"val_{name}") or 0) or float("nan") for r in rows]  # 0 = term not trained yet
              for name in ("amplitude", "phase", "fourier")}
    plots.curve(epochs, series, png, "epoch", "validation loss term", "3D-CDI-NN training", logy=True)


def train(config: TrainConfig, progress: bool = True) -> dict:
    """Run (or resume) the schedule; returns the final validation metrics."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.mixed_precision.set_global_policy(config.precision)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1))
    card = {"width": config.width, "dropout": config.dropout, "friedel": config.friedel, "version": out.name}
    (out / "model.json").write_text(json.dumps(card))  # beside final.weights.h5: `--weights` finds the architecture
    data = load_shards(config.data)
    count = len(data["intensity"])
    order = np.random.default_rng(config.seed).permutation(count)
    n_val = max(1, int(count * config.validation_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if config.twin not in ("canonical", "min"):
        raise ValueError(f"twin must be 'canonical' or 'min', not {config.twin!r}")
    canonical = config.twin == "canonical"
    train_batches = ShardBatches(data, train_idx, config.batch_size, config.seed,
                                 partial_probability=config.partial_probability, canonical=canonical,
                                 flaw_probability=config.flaw_probability)
    val_batches = ShardBatches(data, val_idx, config.batch_size, config.seed, augment=False, canonical=canonical)
    steps = min(config.steps_per_epoch, len(train_batches))
    stages = parse_schedule(config.schedule)
    keras.utils.set_random_seed(config.seed)  # same initial weights for the same config
    net = network.build_model(config.width, config.dropout, config.friedel)
    checkpoint = Checkpoint(out / "checkpoint")
    state = checkpoint.load_state()
    if state:
        checkpoint.restore_weights(net)
        print(f"resuming after epoch {state['global_epoch']} (stage {state['stage']}, epoch {state['epoch']})")
    else:
        if config.init:
            net.load_weights(config.init)
            print(f"starting from {config.init}")
        state = {"stage": 0, "epoch": 0, "global_epoch": 0, "seconds": 0.0}
    log_path = out / "log.csv"
    results = {}
    for stage_index, stage in enumerate(stages):
        if stage_index < state["stage"]:
            continue
        set_trainable(net, stage.trainable)
        trainer = PhysicsAwareTrainer(net, stage.weights, twin_invariant=not canonical)
        optimizer = keras.optimizers.Adam(stage.learning_rate)
        trainer.compile(optimizer=optimizer)
        if state["stage"] == stage_index and state["epoch"] > 0:  # resuming mid-stage
            checkpoint.restore_optimizer(optimizer, trainer.trainable_variables)
        for epoch in range(state["epoch"] if state["stage"] == stage_index else 0, stage.epochs):
            train_batches.epoch = state["global_epoch"]
            keras.utils.set_random_seed(config.seed * 100003 + state["global_epoch"])
            reseed_dropout(net, config.seed * 100003 + state["global_epoch"])
            started = time.perf_counter()
            with tqdm(total=steps, desc=f"{stage.name} {epoch + 1}/{stage.epochs}", disable=not progress,
                      unit="batch") as bar:
                history = trainer.fit(train_batches, epochs=1, steps_per_epoch=steps, verbose=0,
                                      callbacks=[BatchProgress(bar)])
            val = trainer.evaluate(val_batches, verbose=0, return_dict=True)
            seconds = time.perf_counter() - started
            state = {"stage": stage_index, "epoch": epoch + 1, "global_epoch": state["global_epoch"] + 1,
                     "seconds": state["seconds"] + seconds}
            row = {"global_epoch": state["global_epoch"], "stage": stage.name, "epoch": epoch + 1,
                   "seconds": round(seconds, 1), "samples_per_s": round(steps * config.batch_size / seconds, 2),
                   **{f"train_{k}": round(float(v[-1]), 5) for k, v in history.history.items()},
                   **{f"val_{k}": round(float(v), 5) for k, v in val.items()}}
            new_file = not log_path.exists()
            with log_path.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                if new_file:
                    writer.writeheader()
                writer.writerow(row)
            checkpoint.save(net, optimizer, state)
            plot_log(log_path, out / "curve.png")
            results = row
        if stage_index + 1 < len(stages):  # the last stage stays open: a longer schedule continues it
            state = {**state, "stage": stage_index + 1, "epoch": 0}
            checkpoint.save(net, optimizer, state)
    net.save_weights(out / "final.weights.h5")
    summary = {"config": asdict(config), "final": results, "train_seconds": state["seconds"],
               "samples": int(len(train_idx)), "backend": keras.backend.backend(),
               "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
