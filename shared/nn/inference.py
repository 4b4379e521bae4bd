"""Running the shipped 3D-CDI-NN on measured intensities (any size ≥ 32 per axis).

Measured volume → crop + DCT-downsample (shared.physics.downsample) → network →
amplitude and phase on the crop's real-space grid (same voxel size, 32-voxel
field of view) → optionally resampled onto the input's own real-space grid.
Weights ship inside the package and load offline.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras
import numpy as np

from shared.physics.errors import InputError
from shared.nn import mirrors, network
from shared.physics import downsample, metrics
from shared.physics.downsample import to_input_grid

WEIGHTS_DIR = resources.files("shared.nn") / "weights"
WEIGHTS_FILE = "cdi_nn.weights.h5"


def load_model(weights: str | Path | None = None) -> tuple[keras.Model, dict]:
    """Build the network described by model.json beside the weights and load them."""
    path = Path(weights) if weights else Path(str(WEIGHTS_DIR / WEIGHTS_FILE))
    if not path.exists():
        raise InputError(f"{path}: no such weights file")
    card_path = path.with_name("model.json")
    if not card_path.exists():  # weights alone (a checkpoint, a copied file): the shipped architecture
        card_path = Path(str(WEIGHTS_DIR / "model.json"))
    card = json.loads(card_path.read_text())
    model = model_from_card(card)
    try:
        model.load_weights(path)
    except Exception as exc:  # a wrong or damaged file
        raise InputError(f"{path}: cannot load weights ({exc})") from None
    return model, card


def model_from_card(card: dict) -> keras.Model:
    """The (untrained) network a model.json describes; cards before w8f lack the Friedel input."""
    return network.build_model(card["width"], card.get("dropout", 0.1), card.get("friedel", False))


def use_all_cores() -> None:
    """TensorFlow on CPU: one intra-op pool over every core, few inter-op threads."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
            tf.config.threading.set_inter_op_parallelism_threads(2)
        except RuntimeError:  # already initialised: keep what is there
            pass


@dataclass
class Prediction:
    amplitude: np.ndarray  # (B, …) float32, max 1
    phase: np.ndarray
    support: np.ndarray
    chi: np.ndarray  # against the 32³ network input
    seconds: float
    crops: list  # per scan: the crop (per-axis size) the network input came from


class Predictor:
    """Loaded once, called many times (CLI, inference worker)."""

    def __init__(self, weights: str | Path | None = None, batch_size: int = 64, mirrored: bool = True):
        use_all_cores()
        self.model, self.card = load_model(weights)
        self.batch_size = batch_size
        self.mirrored = mirrored  # the answers to the mirror images of each pattern, averaged (``mirrors``)

    def predict_magnitudes(self, magnitudes: np.ndarray, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """The network's answers for (B, 32, 32, 32) magnitudes normalised to max 1: amplitude and phase."""
        magnitudes = np.asarray(magnitudes, np.float32)
        if magnitudes.ndim != 4 or magnitudes.shape[1:] != (network.SIZE,) * 3:
            raise InputError(f"network input must be (B, 32, 32, 32), got {magnitudes.shape}")
        if not self.mirrored:
            return self._predict(magnitudes, progress)
        tick = None if progress is None else (lambda n: progress(n / len(mirrors.MIRRORS)))
        return mirrors.average(*self._predict(np.ascontiguousarray(mirrors.images(magnitudes)), tick))

    def _predict(self, magnitudes: np.ndarray, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """Raw network outputs, ``batch_size`` at a time."""
        amps, phases = [], []
        for first in range(0, len(magnitudes), self.batch_size):
            out = self.model.predict_on_batch(magnitudes[first:first + self.batch_size])
            amps.append(np.asarray(out["amplitude"], np.float32))
            phases.append(np.asarray(out["phase"], np.float32))
            if progress:
                progress(len(amps[-1]))
        return np.concatenate(amps), np.concatenate(phases)

    def reconstruct(self, intensity: np.ndarray, on_input_grid: bool = True, progress=None) -> Prediction:
        """Measured intensities (B, n0, n1, n2) → canonical amplitude/phase per scan."""
        started = time.perf_counter()
        inputs, crops = [], []
        for volume in intensity:  # peak and crop found once, used for the input and the output grid
            centre = downsample.bragg_peak(volume)
            crops.append(downsample.crop_shape(volume, centre))
            inputs.append(downsample.network_input(volume, centre=centre, crop=crops[-1]))
        magnitudes = np.stack(inputs)
        amp, phase = self.predict_magnitudes(magnitudes, progress)
        out_a, out_p, out_s, chis = [], [], [], []
        for a, p, m, crop, volume in zip(amp, phase, magnitudes, crops, intensity):
            obj = a * np.exp(1j * p)
            chis.append(metrics.chi(obj, m**2))
            a, p, s = metrics.canonical(obj)
            if on_input_grid and volume.shape != a.shape:
                a, p, s = to_input_grid(a, p, crop, volume.shape)
            out_a.append(a), out_p.append(p), out_s.append(s)
        return Prediction(np.stack(out_a), np.stack(out_p), np.stack(out_s), np.array(chis),
                          time.perf_counter() - started, crops)


def network_crop(volume: np.ndarray) -> tuple:
    """The crop ``downsample.network_input`` takes from a measured volume."""
    return downsample.crop_shape(volume, downsample.bragg_peak(volume))
