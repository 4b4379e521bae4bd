"""The full-grid stage: the binned answer, carried onto the measured frames' own grid and fitted to all of them.

    region    the Bragg peak's neighbourhood at the detector's own resolution: the box, centred on the
              peak, that holds the connected signal around it (intensity smoothed by 1 voxel ≥ 1 photon,
              or ≥ 1e-6 of the maximum for data that are not counts), MARGIN voxels more, at a fast FFT
              length; an axis it would nearly fill is taken whole. Never binned, never larger than the input
    seed      the binned stage's finalists, zero-padded in real space to the region (DCT downsampling keeps
              the q-extent, so the voxel size is the region's)
    support   the seed's amplitude, blurred by 1 voxel, above 5 % of its maximum, dilated by 8 voxels: the
              binned answer misses the crystal's faint rim and its finer detail
    fit       ER**200 on the region, support fixed, unmeasured voxels free (detector gaps, flagged pixels,
              frames not taken, the box beyond the detector), until χ gains < 0.1 % over 10 iterations
    width     a refined answer fitted with a partial-coherence blur is screened on this grid at its σ × 1, 0.5
              and 0 (``width_factors``, 20*ER each from the first seed), and fitted at the one with the lowest
              χ_free: a σ chosen on a binned grid partly models the binning, which smooths the pattern as a blur
              does; on the detector's grid the frames hold no such blur (simulated coherent 64³ scans binned to
              32³: 0.24 rad at the carried σ against 0.02 coherent, χ_free 0.056 against 0.036)
    grow      then, judged on the withheld voxels (χ_free, issue 31's cross-validation): the support dilated
              by 8 voxels more and ER**20 from where the fit stood, kept while χ_free falls ≥ 2 % per growth,
              4 growths at most; a growth that gains less is undone
    answer    the finalist with the lowest χ; its far field placed back on the input's grid (zero outside
              the region), so the object is on the input's real-space grid, at the measured voxel size

Why ER on a support held between growths: on APS scan 54, HIO, partial-coherence blurring and shrink-wrap from the
binned answer all ended at or above plain ER's χ (0.155–0.18 against 0.152 after 40 iterations); the
binned answer already sits in the right basin and only the support's rim was too tight (0.181 with the
binned support, 0.165, 0.157, 0.152 with 2, 5, 8 voxels of dilation). A textbook ER/HIO from a random
start on the same grid ends at 0.151 (620 iterations): its shrink-wrapped support is as wide. Since the
refined stage selects by χ_free its answer's support is tighter, and 8 voxels no longer reach the rim (χ 0.168):
how far to grow is left to the withheld voxels, which give no credit for fitting noise (scan 54, 60 iterations
after each growth: χ_free 0.181, 0.169, 0.162, 0.161 at 8, 16, 24, 32 voxels; most of each gain comes in the
first 5 iterations, so 20 judge it). The data's
own floor there is 0.142 (``shared.solver.trust``). On simulated crystals with their truth (seed 9900), 8 voxels
of dilation cost ≤ 0.015 rad of phase error against 4 on four of six: a little noise is fitted.

Arrays live on the first backend that works: CuPy on a GPU when it is installed and sees one, else NumPy
with scipy.fft on every core. Memory: about 7 complex64 copies of the region per finalist.
"""

from __future__ import annotations

import dataclasses

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from shared.solver import trust
from shared.physics import coherence, metrics, phasing

SIGNAL_COUNTS = 1.0  # photons per voxel (smoothed): where counting data hold signal
FLOAT_SIGNAL = 1e-6  # of the maximum, for data that are not counts (noise-free: nearly all of it)
MARGIN = 4  # voxels kept beyond the outermost signal voxel
WHOLE_AXIS = 0.9  # a box this close to the axis' length takes the whole axis (no edge to cut)


@dataclass(frozen=True)
class FullPlan:
    schedule: str = "200*ER"
    support_threshold: float = 0.05
    support_sigma: float = 1.0
    support_dilation: int = 8
    blurred_dilation: int | None = None  # the dilation where the fit's model is blurred (None: support_dilation)
    patience: int = 10  # stop when χ gained less than ``tolerance`` (relative) over this many iterations
    tolerance: float = 1e-3
    time_budget: float | None = None  # seconds at most
    grow_by: int = 8  # voxels the support grows by once the fit settles (given withheld voxels to judge it) …
    grow_gain: float = 0.02  # … kept while the first finalist's χ_free falls by this share or more
    grow_iterations: int = 20  # ER iterations after each growth (scan 54: χ_free gains most in the first 5)
    grow_steps: int = 4  # growths at most (0: the support stays the seed's)
    # a blurred refined answer's width, screened on this grid (``choose_blur``): the refined stage's σ scaled by each
    width_factors: tuple = (1.0, 0.5, 0.0)
    width_screen: str = "20*ER"  # each width's fit from the first seed, judged by χ_free

    @property
    def iterations(self) -> int:
        return int(self.schedule.split("*")[0])

    def describe(self) -> str:
        grows = (f"; then the support grown by {self.grow_by} voxels ({self.grow_iterations}*ER after each, at most "
                 f"{self.grow_steps} times) while χ_free falls ≥ {100 * self.grow_gain:g} % per growth"
                 if self.grow_steps else "")
        widths = (f"; a blurred refined answer's width × {', '.join(f'{f:g}' for f in self.width_factors)} screened "
                  f"by {self.width_screen} each, the lowest χ_free fitted" if len(self.width_factors) > 1 else "")
        return (f"{self.schedule} on the full grid, support fixed (seed blurred by {self.support_sigma} voxel "
                f"> {self.support_threshold} of its maximum, dilated by {self.support_dilation}"
                f"{'' if self.blurred_dilation is None else f', by {self.blurred_dilation} for a blurred model'}), "
                f"stop when χ gains < {100 * self.tolerance:g} % over {self.patience} iterations{grows}{widths}")


FULL_PLAN = FullPlan()


# ---------------------------------------------------------------------------------------------- region


@dataclass(frozen=True)
class Region:
    """A box of the input, ``shape`` voxels centred on ``peak`` (the peak lands at index shape//2). An axis
    as long as the input's is taken whole, circularly (exact on the FFT's periodic grid); on a cut axis the
    box may run past the detector's edge, and those voxels are unmeasured."""

    input_shape: tuple
    peak: tuple
    shape: tuple

    def axis_indices(self) -> list[np.ndarray]:
        out = []
        for n, p, r in zip(self.input_shape, self.peak, self.shape):
            index = p - r // 2 + np.arange(r)
            out.append(index % n if r == n else index)
        return out

    def inside(self) -> np.ndarray:
        """Region voxels that lie on the input (broadcastable boolean)."""
        valid = [(i >= 0) & (i < n) for i, n in zip(self.axis_indices(), self.input_shape)]
        return valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]

    def _clipped(self):
        return [np.clip(i, 0, n - 1) for i, n in zip(self.axis_indices(), self.input_shape)]

    def take(self, volume: np.ndarray) -> np.ndarray:
        """The region of an input-shaped array; voxels beyond the input are 0."""
        values = np.asarray(volume)[np.ix_(*self._clipped())]
        inside = self.inside()
        return values if inside.all() else np.where(inside, values, 0).astype(values.dtype)

    def put(self, values: np.ndarray) -> np.ndarray:
        """An input-shaped array, ``values`` in the region and 0 elsewhere."""
        valid = [(i >= 0) & (i < n) for i, n in zip(self.axis_indices(), self.input_shape)]
        out = np.zeros(self.input_shape, values.dtype)
        index = [i[v] for i, v in zip(self.axis_indices(), valid)]
        out[np.ix_(*index)] = values[np.ix_(*[np.flatnonzero(v) for v in valid])]
        return out

    def as_dict(self) -> dict:
        return {"shape": list(self.shape), "peak": list(self.peak), "input_shape": list(self.input_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "Region":
        return cls(tuple(d["input_shape"]), tuple(d["peak"]), tuple(d["shape"]))


def signal_region(volume: np.ndarray, peak, measured: np.ndarray | None = None, minimum: int = 32) -> Region:
    """Where the signal stands above the noise around ``peak`` (see the module's docstring)."""
    values = np.asarray(volume, np.float32)
    if measured is not None:
        values = np.where(measured, values, 0)
    smooth = ndimage.gaussian_filter(values, 1.0)
    level = SIGNAL_COUNTS if trust.is_counting(values) else FLOAT_SIGNAL * float(smooth.max())
    above = smooth >= level
    labels, _ = ndimage.label(above)
    here = labels[tuple(peak)]
    signal = labels == here if here else above
    shape = []
    for n, p, span in zip(values.shape, peak, metrics.spans(signal)):
        half = max(p - span[0], span[1] - p) if span else 0
        size = max(sfft.next_fast_len(2 * (int(half) + MARGIN) + 1), min(n, minimum))
        shape.append(n if size >= WHOLE_AXIS * n else size)
    return Region(tuple(values.shape), tuple(int(p) for p in peak), tuple(shape))


def place_back(obj: np.ndarray, region: Region) -> np.ndarray:
    """An object fitted on the region → the same answer on the input's grid: its far field placed at the
    region's voxels, zero elsewhere (the input's voxel size; the peak's offset becomes a phase ramp)."""
    far = sfft.fftshift(sfft.fftn(obj, workers=-1))
    return sfft.ifftn(sfft.ifftshift(region.put(far.astype(np.complex64))), workers=-1).astype(np.complex64)


# ---------------------------------------------------------------------------------------------- backend


def backend():
    """(array module, fft module): CuPy when it is installed and a GPU answers, else NumPy + scipy.fft."""
    try:
        import cupy
        import cupyx.scipy.fft as cufft

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy, cufft
    except Exception:  # no CuPy, no driver, no device: the CPU path
        pass
    return np, sfft


def to_host(values):
    return values.get() if hasattr(values, "get") else np.asarray(values)


# ---------------------------------------------------------------------------------------------- the fit


@dataclass
class FullFit:
    obj: np.ndarray  # (F, …) complex64 on the region, best finalist first
    support: np.ndarray  # (…) bool
    chi: np.ndarray  # (F,) over the region's measured voxels
    iterations: int
    seconds: float
    history: list = field(default_factory=list)  # χ of the first finalist per iteration
    times: list = field(default_factory=list)  # seconds since this run's start, per iteration
    device: str = "cpu"
    interrupted: bool = False  # it yielded: ``checkpoint`` resumes it, with the same result as one run
    checkpoint: dict | None = None
    background: float | None = None  # the flat background its model held (intensity units; None: none)
    grown: int = 0  # times its support grew by ``FullPlan.grow_by`` voxels and kept the growth

    def to_arrays(self) -> dict:
        """A finished fit as a checkpoint's arrays (``Checkpoint.save``): what a polish that yields starts from."""
        return {"obj": self.obj, "support": self.support, "chi": np.asarray(self.chi), "iterations": np.int64(self.iterations),
                "seconds": np.float64(self.seconds), "history": np.asarray(self.history, np.float64),
                "times": np.asarray(self.times, np.float64), "device": np.array(self.device),
                "background": np.float64(np.nan if self.background is None else self.background),
                "grown": np.int64(self.grown)}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "FullFit":
        background = float(arrays["background"])
        return cls(arrays["obj"], arrays["support"].astype(bool), arrays["chi"], int(arrays["iterations"]),
                   float(arrays["seconds"]), [float(c) for c in arrays["history"]], [float(t) for t in arrays["times"]],
                   str(arrays["device"]), background=None if np.isnan(background) else background,
                   grown=int(arrays["grown"]))


def support_of(seed: np.ndarray, plan: FullPlan = FULL_PLAN, blurred_model: bool = False) -> np.ndarray:
    """The fit's support: the seed's amplitude smoothed, thresholded and dilated (``plan.blurred_dilation`` voxels
    where the fit's model is blurred and the plan sets one)."""
    smooth = ndimage.gaussian_filter(np.abs(seed).astype(np.float32), plan.support_sigma)
    support = smooth > plan.support_threshold * smooth.max()
    dilation = plan.blurred_dilation if blurred_model and plan.blurred_dilation is not None else plan.support_dilation
    return ndimage.binary_dilation(support, iterations=dilation) if dilation else support


def free_chi(intensity: np.ndarray, withheld: np.ndarray, obj: np.ndarray, blur=None, background=None) -> float:
    """χ of one answer (on the region's grid, unshifted) on the ``withheld`` voxels, through the model it was fitted
    with (``blur``: σ per axis, or None; ``background``: flat, or None)."""
    magnitude = sfft.ifftshift(np.sqrt(np.clip(intensity, 0, None)))[None]
    multiplier = coherence.of(intensity.shape, None if blur is None else [blur])
    return float(phasing.masked_chi(obj[None], magnitude, sfft.ifftshift(withheld)[None], multiplier,
                                    None if background is None else np.array([background], np.float32))[0])


def choose_blur(intensity: np.ndarray, measured: np.ndarray, withheld: np.ndarray, seeds: np.ndarray, blur,
                background=None, plan: FullPlan = FULL_PLAN, yield_now=None):
    """The partial-coherence σ this grid's fit uses: ``blur`` (the refined stage's, on this grid's voxels) scaled by
    each of ``plan.width_factors``, each fitted by ``plan.width_screen`` from the first seed; the lowest χ_free on
    the ``withheld`` voxels stands (None: coherent). Returns (σ or None, {σ as text: χ_free}), or None where
    ``yield_now`` cut the screen short. A coherent answer is not screened: only a blur can be carried wrongly."""
    blurred = trust.is_blurred(blur)
    if not blurred or len(plan.width_factors) < 2:
        return (blur if blurred else None), {}
    screen = dataclasses.replace(plan, schedule=plan.width_screen, grow_steps=0, time_budget=None,
                                 blurred_dilation=None)  # one support for every width: their χ_free compare
    scores = {}
    for factor in plan.width_factors:
        width = tuple(round(float(factor) * float(b), 4) for b in blur) if factor else None
        fitted = fit(intensity, measured, seeds[:1], screen, yield_now, blur=width, background=background)
        if fitted.interrupted:
            return None
        scores[width] = free_chi(intensity, withheld, fitted.obj[0], width, background)
    best = min(scores, key=scores.get)
    return (list(best) if best else None), {str(list(w) if w else [0.0] * len(blur)): round(c, 5)
                                           for w, c in scores.items()}


def fit(intensity: np.ndarray, measured: np.ndarray | None, seeds: np.ndarray, plan: FullPlan = FULL_PLAN,
        yield_now=None, resume: dict | None = None, progress=None, blur=None, background=None,
        withheld: np.ndarray | None = None) -> FullFit:
    """ER with a fixed support (from the first seed; grown only as below) of every seed (F, …) against one
    centred region intensity (…); the answer is ordered by χ, best first. ``blur``: σ per axis (voxels) of the partial-coherence
    blur the refined stage chose (``shared.physics.coherence``); None or zeros: coherent. ``background``: the flat
    background the refined stage fitted, where it fitted one (None: none), held: with this fit's support, dilated
    for the crystal's rim, the object's own skirt absorbs a flat background, and an EM fit of it here decays to 0.

    ``withheld`` (the cross-validation voxels, left out of ``measured``): once the fit settles, its support grows
    by ``plan.grow_by`` voxels and the fit goes on, as long as the first finalist's χ_free falls by
    ``plan.grow_gain`` or more per growth; a growth that gains less is undone (the answer before it is kept).

    ``yield_now()``, asked between iterations, stops the fit (``interrupted``): its ``checkpoint`` passed
    back as ``resume`` goes on, with the same result as one run."""
    xp, fft = backend()
    started = time.perf_counter()
    magnitude = xp.asarray(sfft.ifftshift(np.sqrt(np.clip(intensity, 0, None))).astype(np.float32))
    free = None if measured is None or np.all(measured) else xp.asarray(~sfft.ifftshift(measured))
    norm = float(xp.linalg.norm(magnitude if free is None else magnitude * ~free))
    if resume is None:
        support = support_of(seeds[0], plan, trust.is_blurred(blur))
        obj, done, history = seeds.astype(np.complex64) * support, 0, []
        growth = {"grown": 0, "since": 0, "best_chi_free": np.inf, "best_obj": None, "best_support": None}
    else:
        support, obj, done = resume["support"].astype(bool), resume["obj"], int(resume["done"])
        history = [float(c) for c in resume["history"]]
        growth = {"grown": int(resume.get("grown", 0)), "since": int(resume.get("since", 0)),
                  "best_chi_free": float(resume.get("best_chi_free", np.inf)),
                  "best_obj": resume.get("best_obj"),
                  "best_support": None if resume.get("best_support") is None else resume["best_support"].astype(bool)}
    obj, inside = xp.asarray(obj), xp.asarray(support)
    weight = None if free is None else (~free).astype(xp.float32)
    check = None if withheld is None or not plan.grow_steps else xp.asarray(sfft.ifftshift(withheld))
    check_norm = None if check is None else float(xp.linalg.norm(magnitude * check))
    workers = {} if xp is not np else {"workers": -1}
    axes, interrupted, times = (1, 2, 3), False, []
    multiplier = coherence.of(intensity.shape, None if blur is None else [blur])
    multiplier = None if multiplier is None else xp.asarray(multiplier)
    flat = None if background is None else xp.asarray([background], dtype=xp.float32)  # held

    def model(far):
        return coherence.modulus(far, multiplier, xp, fft, background=flat)

    def settled() -> bool:
        """This support's fit has stopped gaining, or used its iterations."""
        steps = done - growth["since"]
        if steps >= (plan.iterations if growth["grown"] == 0 else plan.grow_iterations):
            return True
        window = history[growth["since"]:][-plan.patience - 1:]
        return len(window) > plan.patience and window[0] - window[-1] < plan.tolerance * window[0]

    while True:
        far = fft.fftn(obj, axes=axes, **workers)
        amplitude = model(far)
        history.append(float(_misfit(xp, amplitude[:1], magnitude, weight, norm)[0]))
        times.append(time.perf_counter() - started)
        projected = far * (magnitude / xp.maximum(amplitude, 1e-30))
        if free is not None:
            projected = xp.where(free, far, projected)
        obj = (fft.ifftn(projected, axes=axes, **workers) * inside).astype(xp.complex64)
        done += 1
        if progress is not None:
            progress(1)
        if settled():
            if check is None:
                break
            difference = (model(fft.fftn(obj[:1], axes=axes, **workers)) - magnitude) * check
            chi_free = float(xp.linalg.norm(difference)) / check_norm  # as ``phasing.masked_chi`` reports it
            if chi_free > growth["best_chi_free"] * (1 - plan.grow_gain):  # too little gained: undo the growth
                if growth["best_obj"] is not None:
                    obj, support = xp.asarray(growth["best_obj"]), growth["best_support"]
                    growth["grown"] -= 1
                break
            if growth["grown"] >= plan.grow_steps:
                break
            growth.update(best_chi_free=chi_free, best_obj=to_host(obj), best_support=support, since=done,
                          grown=growth["grown"] + 1)
            support = ndimage.binary_dilation(support, iterations=plan.grow_by)
            inside = xp.asarray(support)
        if plan.time_budget is not None and time.perf_counter() - started > plan.time_budget:
            break
        if yield_now is not None and yield_now():
            interrupted = True
            break
    host = to_host(obj)
    seconds = time.perf_counter() - started + (float(resume["seconds"]) if resume is not None else 0.0)
    if interrupted:
        state = {"obj": host, "support": support, "done": np.int64(done), "history": np.asarray(history),
                 "seconds": np.float64(seconds), "grown": np.int64(growth["grown"]),
                 "since": np.int64(growth["since"]), "best_chi_free": np.float64(growth["best_chi_free"])}
        if growth["best_obj"] is not None:
            state.update(best_obj=growth["best_obj"], best_support=growth["best_support"])
        return FullFit(host, support, np.array([history[-1]]), done, seconds, history, times, interrupted=True,
                       checkpoint=state, background=background, grown=growth["grown"])
    chi = to_host(_misfit(xp, model(fft.fftn(obj, axes=axes, **workers)), magnitude, weight, norm))
    order = np.argsort(chi)  # χ of each answer itself, after its last projection
    return FullFit(host[order], support, chi[order], done, seconds, history, times, "gpu" if xp is not np else "cpu",
                   background=background, grown=growth["grown"])


POLISH = "20*ER"  # the last iterations, on every measured voxel (the fit itself leaves the free set out)


def polish(intensity: np.ndarray, measured: np.ndarray | None, fitted: FullFit, plan: FullPlan = FULL_PLAN,
           blur=None, yield_now=None, resume: dict | None = None) -> FullFit:
    """``fitted``'s answers, a few ER iterations more on all the measured voxels (its support and background
    model kept): the cross-validated fit leaves the withheld voxels free, the answer the user gets fits them too.
    ``yield_now`` and ``resume`` as ``fit``'s (on scan 54's full grid the polish takes ~15 s): an interrupted polish
    is returned as ``fit`` returns it, its ``checkpoint`` to pass back as ``resume`` with the same ``fitted``."""
    resume = resume or {"support": fitted.support, "obj": fitted.obj, "done": np.int64(0), "history": np.asarray([]),
                        "seconds": np.float64(0.0)}
    last = fit(intensity, measured, fitted.obj, dataclasses.replace(plan, schedule=POLISH, time_budget=None),
               yield_now, resume, blur=blur, background=fitted.background)
    if last.interrupted:
        return last
    return dataclasses.replace(last, iterations=fitted.iterations + last.iterations,
                               seconds=fitted.seconds + last.seconds, history=fitted.history + last.history,
                               times=fitted.times + [fitted.seconds + t for t in last.times], device=fitted.device,
                               grown=fitted.grown)


def _misfit(xp, amplitude, magnitude, weight, norm: float):
    """χ per finalist: ‖s·|F| − √I‖ / ‖√I‖ over the measured voxels, best scale s."""
    axes = tuple(range(1, amplitude.ndim))
    w = 1 if weight is None else weight
    scale = (amplitude * magnitude * w).sum(axis=axes) / xp.maximum((amplitude**2 * w).sum(axis=axes), 1e-30)
    scale = scale.reshape((-1,) + (1,) * len(axes))
    return xp.sqrt(((scale * amplitude - magnitude) ** 2 * w).sum(axis=axes)) / norm
