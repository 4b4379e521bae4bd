"""Training batches from simulated HDF5 shards, with exact, seeded augmentation.

Each batch is a deterministic function of (seed, epoch, batch index), so a
resumed run sees exactly the data an uninterrupted one would have. Augmentation:
- the 48 symmetries of the cube (axis permutations and inversions), applied to
  the object and its diffraction alike (exact: |F| transforms the same way);
- truncated rocking curves: with probability ``partial_probability`` only the
  first k frames (axis 0) are kept, k from 30% to 100%, the rest zero — what the
  streaming service sees while a scan is running. The Fourier loss still
  compares against the full, noiseless magnitude;
- flagged detector pixels: with probability ``flaw_probability`` a module gap
  (1–3 columns of one detector axis, through every frame, beside the peak) and a
  few dead pixels are dropped and inpainted exactly as the service fills them
  (``shared.physics.inpainting``), so the network learns what a filled hole
  looks like; the target is still the full magnitude.
Twin image: with ``canonical_twin`` each target is replaced, when needed, by its
twin so that its ``handedness`` is non-negative (shared.physics.metrics): both
twins give the same input, so the network is shown one answer, not two.
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import scipy.fft as sfft

from shared.physics.errors import InputError
from shared.physics.metrics import canonical_twin
from shared.physics.inpainting import inpaint


def load_shards(paths, size: int = 32) -> dict[str, np.ndarray]:
    """Concatenate intensity/amplitude/phase of simulated shards (held in memory)."""
    parts = {"intensity": [], "amplitude": [], "phase": []}
    for path in paths:
        with h5py.File(path, "r") as f:
            for key in parts:
                if key not in f:
                    raise InputError(f"{path}: no dataset {key!r}; write it with 'cdi-live simulate'")
                if f[key].shape[1:] != (size,) * 3:
                    raise InputError(f"{path}: {key} has shape {f[key].shape}, need (N, {size}, {size}, {size})")
                parts[key].append(f[key][()])
    return {key: np.concatenate(value) for key, value in parts.items()}


def invert(x: np.ndarray, axis: int) -> np.ndarray:
    """Point inversion along one axis about index n//2 (flip, then roll by one)."""
    return np.roll(np.flip(x, axis), 1, axis)


def magnitude_of(intensity: np.ndarray) -> np.ndarray:
    """√I normalised to max 1 per scan (the network's input convention)."""
    mag = np.sqrt(np.clip(intensity, 0, None))
    return mag / np.maximum(mag.max(axis=(1, 2, 3), keepdims=True), 1e-30)


def truncate_frames(magnitude: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Zero every frame (axis 0 of each volume) from index ``kept[i]`` on, then renormalise."""
    out = magnitude.copy()
    frames = np.arange(magnitude.shape[1])
    out *= (frames[None, :] < kept[:, None])[:, :, None, None]
    return out / np.maximum(out.max(axis=(1, 2, 3), keepdims=True), 1e-30)


def flagged_pixels(volume: np.ndarray, rng: np.random.Generator, dead: int = 8) -> np.ndarray:
    """Where a real detector holds no count, for one frames-first volume: a module gap of 1–3 columns along
    one detector axis, starting within 4 pixels of the Bragg peak, and up to ``dead`` dead pixels, both
    through every frame."""
    n = volume.shape
    axis = int(rng.integers(1, 3))
    peak = np.unravel_index(int(volume.argmax()), n)[axis]
    width = int(rng.integers(1, 4))
    start = int(np.clip(peak + rng.integers(-4, 5), 0, n[axis] - width))
    pixels = np.zeros(n[1:], bool)
    pixels[(slice(None),) * (axis - 1) + (slice(start, start + width),)] = True
    count = int(rng.integers(0, dead + 1))
    pixels[rng.integers(0, n[1], count), rng.integers(0, n[2], count)] = True
    return np.broadcast_to(pixels, n)


class ShardBatches(keras.utils.PyDataset):
    """Batches of (magnitude, {amplitude, phase, magnitude}) for the physics-aware loss."""

    def __init__(self, data, indices, batch_size=16, seed=0, augment=True, partial_probability=0.5,
                 min_fraction=0.3, canonical=True, flaw_probability=0.0):
        super().__init__(workers=1, use_multiprocessing=False)
        self.data, self.indices = data, np.asarray(indices)
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.partial_probability, self.min_fraction = partial_probability, min_fraction
        self.canonical = canonical
        self.flaw_probability = flaw_probability
        self.epoch = 0

    def __len__(self):
        """Training drops the last partial batch; evaluation keeps every sample."""
        if self.augment:
            return len(self.indices) // self.batch_size
        return -(-len(self.indices) // self.batch_size)

    def __getitem__(self, i):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.indices) if self.augment else self.indices
        pick = np.sort(order[i * self.batch_size:(i + 1) * self.batch_size])
        rng = np.random.default_rng([self.seed, self.epoch, i, 7])
        intensity = self.data["intensity"][pick]
        amplitude = self.data["amplitude"][pick]
        phase = self.data["phase"][pick]
        if self.augment:
            perm = [0] + list(1 + rng.permutation(3))
            intensity, amplitude, phase = (np.transpose(a, perm) for a in (intensity, amplitude, phase))
            for axis in (1, 2, 3):
                if rng.random() < 0.5:  # inversion of one axis maps the object and |F| alike
                    intensity, amplitude, phase = (invert(a, axis) for a in (intensity, amplitude, phase))
        if self.canonical:
            pairs = [canonical_twin(a, p) for a, p in zip(amplitude, phase)]
            amplitude, phase = np.stack([a for a, _ in pairs]), np.stack([p for _, p in pairs])
        obj = amplitude * np.exp(1j * phase)
        clean = np.abs(sfft.fftshift(sfft.fftn(obj, axes=(1, 2, 3), workers=-1), axes=(1, 2, 3)))
        clean = (clean / clean.max(axis=(1, 2, 3), keepdims=True)).astype(np.float32)
        if self.augment and self.flaw_probability:
            flawed = rng.random(len(pick)) < self.flaw_probability
            intensity = np.stack([inpaint(v, flagged_pixels(v, rng)) if f else v
                                  for v, f in zip(intensity, flawed)])
        magnitude = magnitude_of(intensity)
        if self.augment and self.partial_probability:
            n = magnitude.shape[1]
            partial = rng.random(len(pick)) < self.partial_probability
            kept = np.where(partial, rng.integers(int(self.min_fraction * n), n, len(pick)), n)
            magnitude = truncate_frames(magnitude, kept)
        targets = {"amplitude": np.ascontiguousarray(amplitude, np.float32),
                   "phase": np.ascontiguousarray(phase, np.float32), "magnitude": clean}
        return np.ascontiguousarray(magnitude, np.float32), targets
