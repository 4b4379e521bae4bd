"""Refinement of a prediction by gradient descent through the forward model (AD), as in the paper.

    minimise  L(ρ) = Σ W·(|F(ρ·S)| − M)² / Σ M²        (Gaussian; χ² )
          or  L(ρ) = Σ W·(|F|² − I·log|F|²) / Σ I      (Poisson likelihood)
    with |F|² convolved with the scan's partial-coherence blur where it has one, plus its flat background
    W = 1 where measured, 0 where not (detector gaps, bad pixels, frames not
    yet acquired): there the model is free instead of being pulled to zero.
    over ρ = re + i·im, with Adam, starting from the network's prediction,
    the support S shrink-wrapped every ``shrink_every`` steps,
    stopping at ``steps``, a χ plateau, or a time budget.

Scans of a batch refine together (the loss is a sum of per-scan terms, and
Adam is element-wise, so they do not interact). The best iterate per scan is
kept, so refinement never returns a χ above its start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras
import numpy as np
import scipy.fft as sfft
from keras import ops

from shared.physics.errors import InputError
from shared.nn.autodiff import descent_step
from shared.nn.fft import blurred_power, fft3
from shared.physics import coherence, phasing

AXES = (1, 2, 3)


@dataclass
class RefineResult:
    obj: np.ndarray  # (B, n, n, n) complex64, best iterate per scan
    support: np.ndarray
    chi: np.ndarray  # final (best) χ per scan
    chi_start: np.ndarray
    history: list = field(default_factory=list)  # (seconds, χ per scan) per step
    steps: int = 0
    seconds: float = 0.0
    interrupted: bool = False  # ``interrupt()`` stopped it early: ``state`` goes on from there
    state: dict = field(default_factory=dict)  # arrays to pass back as ``resume`` (iterate, Adam's moments, best)


def model_power(params, support, background, blur):
    """|F(ρ·S)|², blurred by the partial-coherence multiplier and its centre weight in ``blur`` if given, plus the
    flat ``background`` per scan ((B, 1, 1, 1), held: the projections fitted it)."""
    re, im = params
    fr, fi = fft3(re * support, im * support)
    return (blurred_power(fr, fi, *blur) if blur else fr * fr + fi * fi) + background


def gaussian_loss(params, magnitude, support, measured, background, *blur):
    modulus = ops.sqrt(model_power(params, support, background, blur) + 1e-20)
    chi2 = ops.sum(measured * (modulus - magnitude) ** 2, axis=AXES) / ops.sum(magnitude**2, axis=AXES)
    return ops.sum(chi2), ops.sqrt(chi2)


def poisson_loss(params, magnitude, support, measured, background, *blur):
    power = model_power(params, support, background, blur)
    counts = magnitude**2
    nll = ops.sum(measured * (power - counts * ops.log(power + 1e-12)), axis=AXES) / ops.sum(counts, axis=AXES)
    misfit = measured * (ops.sqrt(power + 1e-20) - magnitude) ** 2
    chi = ops.sqrt(ops.sum(misfit, axis=AXES) / ops.sum(counts, axis=AXES))
    return ops.sum(nll), chi


LOSSES = {"gaussian": gaussian_loss, "poisson": poisson_loss}


class _Engine:
    """Variables, Adam and the compiled step for one (shape, loss), kept between calls:
    building the step's graph costs far more than a refinement of a 32³ scan."""

    def __init__(self, shape, loss: str):
        self.re = keras.Variable(np.zeros(shape, np.float32), name="re")
        self.im = keras.Variable(np.zeros(shape, np.float32), name="im")
        self.optimizer = keras.optimizers.Adam(1e-3)
        self.optimizer.build([self.re, self.im])
        self.step = descent_step(LOSSES[loss], self.optimizer, [self.re, self.im])

    def start(self, obj: np.ndarray, learning_rate: float) -> None:
        """A fresh run: the start object in the variables, Adam's moments and step count zero."""
        self.re.assign(obj.real)
        self.im.assign(obj.imag)
        for variable in self.optimizer.variables:
            variable.assign(keras.ops.zeros_like(variable))
        self.optimizer.learning_rate = learning_rate


_ENGINES: dict[tuple, _Engine] = {}


def engine(shape, loss: str, blurred: bool = False) -> _Engine:
    """One per (shape, loss, with a partial-coherence blur or not): the blurred step takes two more inputs, and
    one compiled step serves one signature."""
    key = (tuple(shape), loss, blurred)
    if key not in _ENGINES:
        _ENGINES[key] = _Engine(shape, loss)
    return _ENGINES[key]


def warm_up(shape=(32, 32, 32), batches=(1,), loss: str = "gaussian") -> None:
    """Build and compile the steps a worker will take, coherent and blurred, for each batch size: a compiled step
    serves one signature, and building one takes 0.2–0.4 s (more at the refinement worker's niceness), which the first
    live scan after a start paid in its end → refined time and which no yield can cut short."""
    rng = np.random.default_rng(0)
    for batch in batches:
        start = (rng.random((batch, *shape)) * (np.indices(shape).sum(0) % 2 == 0)).astype(np.complex64)
        intensity = np.abs(np.fft.fftshift(np.fft.fftn(start, axes=AXES), axes=AXES)) ** 2
        for blur in (None, np.full(batch, 0.5, np.float32)):
            refine(intensity, start, steps=1, loss=loss, shrink_every=0, blur_widths=blur)


def scale_to_data(start: np.ndarray, magnitude_unshifted: np.ndarray) -> np.ndarray:
    """Scale the start so Σ|F(ρ)|² equals Σ M² (Parseval: Σ|F|² = N Σ|ρ|²)."""
    power = (np.abs(start) ** 2).sum(AXES) * np.prod(start.shape[1:])
    scale = np.sqrt((magnitude_unshifted**2).sum(AXES) / np.maximum(power, 1e-30))
    return (start * scale.reshape(-1, 1, 1, 1)).astype(np.complex64)


def refine(intensity: np.ndarray, start: np.ndarray, steps: int = 200, learning_rate: float = 0.1,
           loss: str = "gaussian", shrink_every: int = 25, sigma: float = 1.0, threshold: float = 0.1,
           time_budget: float | None = None, patience: int = 30, tolerance: float = 1e-4,
           progress=None, measured: np.ndarray | None = None, interrupt=None,
           resume: dict | None = None, blur_widths: np.ndarray | None = None,
           background: np.ndarray | None = None) -> RefineResult:
    """Refine ``start`` (B, n, n, n complex, centred) against ``intensity`` (B, n, n, n, centred).

    ``measured`` (bool, centred like the intensity) marks the voxels that were
    measured; the others do not enter the loss. ``shrink_every`` 0 keeps the
    start's support (its amplitude above ``threshold``) fixed. ``interrupt()``, asked after
    every step, stops early when true (a preempted refinement); its ``state`` passed back as ``resume``
    goes on exactly where it stopped (``steps`` and ``time_budget`` count the whole run). ``blur_widths``: per scan,
    the partial-coherence blur σ per axis (B, 3), or on the detector axes alone (B,), voxels, that the model
    convolves |F|² with (``shared.solver.plans``);
    ``background``: per scan, the flat background it adds (the intensity's units), held fixed.
    """
    if loss not in LOSSES:
        raise InputError(f"unknown loss {loss!r}; use {' or '.join(LOSSES)}")
    if steps < 0 or learning_rate <= 0 or (time_budget is not None and time_budget <= 0):
        raise InputError("steps must be ≥ 0, learning rate and time budget positive")
    intensity = np.asarray(intensity, np.float32)
    start = np.asarray(start, np.complex64)
    if intensity.ndim != 4 or start.shape != intensity.shape:
        raise InputError(f"intensity {intensity.shape} and start {start.shape} must both be (B, n, n, n)")
    began = time.perf_counter()
    magnitude = sfft.ifftshift(np.sqrt(np.clip(intensity, 0, None)), axes=AXES).astype(np.float32)
    weight = np.ones_like(magnitude) if measured is None else sfft.ifftshift(
        np.broadcast_to(measured, intensity.shape), axes=AXES).astype(np.float32)
    mask = None if measured is None else weight > 0
    obj = scale_to_data(start, magnitude)
    amp = np.abs(obj)
    support = (amp > threshold * amp.max(axis=AXES, keepdims=True)).astype(np.float32)
    kernel = phasing.blur_kernel(amp.shape[1:], sigma)
    if shrink_every:
        support = np.maximum(support, phasing.support_from(amp, threshold, kernel))
    # per scan, σ per axis from a plan's blur entry (a width on the detector axes, or three σ)
    sigmas = None if blur_widths is None else np.stack([coherence.sigmas_of(w) for w in blur_widths])
    half_kernel, blur = coherence.of(obj.shape[1:], sigmas), ()
    if half_kernel is not None:  # the step's blur: the full-layout multiplier and the same centre weight
        centre = coherence.centre(half_kernel, obj.shape[-1])[:, None, None, None]
        blur = (ops.convert_to_tensor(coherence.kernel(obj.shape[1:], sigmas, half=False)),
                ops.convert_to_tensor(centre))
    run = engine(obj.shape, loss, bool(blur))
    run.start(obj, learning_rate * float(amp.max()))
    re, im, step = run.re, run.im, run.step
    if resume is None:
        chi_start = phasing.project_chi(obj * support, magnitude, mask, half_kernel, background)
        best, best_chi = (obj * support).astype(np.complex64), chi_start.copy()
        best_support = support > 0
        history = [(0.0, chi_start.copy())]
        first = 1
    else:  # where an interrupted run stopped: its iterate, Adam's moments, its best and its recent history
        re.assign(resume["current"].real), im.assign(resume["current"].imag)
        for variable, value in zip(run.optimizer.variables, (resume[f"adam_{k}"] for k in range(len(run.optimizer.variables)))):
            variable.assign(value)
        support, chi_start = resume["support"], resume["chi_start"]
        best, best_chi, best_support = resume["best"].copy(), resume["best_chi"].copy(), resume["best_support"].copy()
        history = [(0.0, h) for h in resume["history_chi"]]
        first, began = int(resume["taken"]) + 1, began - float(resume["elapsed"])
    data_m, data_w = ops.convert_to_tensor(magnitude), ops.convert_to_tensor(weight)
    flat = ops.convert_to_tensor(np.zeros(len(obj), np.float32) if background is None else
                                 np.asarray(background, np.float32).reshape(len(obj)))[:, None, None, None]
    taken = first - 1
    for taken in range(first, steps + 1):
        chi, before = step(data_m, ops.convert_to_tensor(support), data_w, flat, *blur)
        chi = np.asarray(chi)  # χ of ``before``: the step evaluates, then updates
        improved = chi < best_chi
        if improved.any():
            candidate = (np.asarray(before[0]) + 1j * np.asarray(before[1])) * support
            best[improved], best_chi[improved] = candidate[improved], chi[improved]
            best_support[improved] = support[improved] > 0
        history.append((time.perf_counter() - began, best_chi.copy()))
        if progress:
            progress(1)
        if shrink_every and taken % shrink_every == 0:
            current = np.abs(np.asarray(re.value) + 1j * np.asarray(im.value)) * support
            support = phasing.support_from(current, threshold, kernel).astype(np.float32)
        if time_budget and time.perf_counter() - began > time_budget:
            break
        if taken > patience and np.all(history[-patience - 1][1] - best_chi < tolerance * best_chi):
            break
        if interrupt is not None and taken < steps and interrupt():
            current = np.asarray(re.value) + 1j * np.asarray(im.value)
            state = {"current": current.astype(np.complex64), "support": support, "chi_start": chi_start,
                     "best": best, "best_chi": best_chi, "best_support": best_support, "taken": taken,
                     "history_chi": np.stack([h for _, h in history[-patience - 1:]]),
                     "elapsed": time.perf_counter() - began,
                     **{f"adam_{k}": np.asarray(v.value) for k, v in enumerate(run.optimizer.variables)}}
            return RefineResult(best, best_support, best_chi, chi_start, history, taken,
                                time.perf_counter() - began, True, state)
    last = (np.asarray(re.value) + 1j * np.asarray(im.value)) * support
    last_chi = phasing.project_chi(last.astype(np.complex64), magnitude, mask, half_kernel, background)
    improved = last_chi < best_chi
    best[improved], best_chi[improved], best_support[improved] = last[improved], last_chi[improved], support[improved] > 0
    return RefineResult(best, best_support, best_chi, chi_start, history, taken, time.perf_counter() - began)
