"""Iterative phase retrieval: ER and HIO with shrink-wrap, the yardstick.

A schedule reads like the literature (cohere / PyNX notation)::

    PAPER_SCHEDULE = "3*(20*ER+180*HIO)+20*ER"     # 620 iterations

Every step works on a whole batch of scans at once (FFTs over the last three
axes), in complex64, in place, with scipy.fft on all cores. The magnitude
constraint runs in the unshifted FFT frame, so no fftshift happens in the loop.
The result is averaged over the last ``average_last`` iterations.
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

from shared.physics import coherence, fftw, kernels
from shared.physics.errors import InputError

fftw.install()  # FFTW for the transforms it was measured faster at (phasing's), scipy's FFT for the rest

PAPER_SCHEDULE = "3*(20*ER+180*HIO)+20*ER"
AXES = (1, 2, 3)


@dataclass
class PhasingState:
    """Everything one run carries between steps (batch-first arrays)."""

    magnitude: np.ndarray  # measured |F|, unshifted FFT frame, float32 (B, n, n, n)
    obj: np.ndarray  # current estimate, complex64
    support: np.ndarray  # bool
    measured: np.ndarray | None = None  # bool, unshifted frame; False = not measured (gap, frame not yet taken)
    beta: float = 0.9
    sigma: float = 1.0  # shrink-wrap Gaussian blur (voxels)
    threshold: float | np.ndarray = 0.1  # shrink-wrap threshold, fraction of the blurred maximum (per run: B, 1, 1, 1)
    shrink_every: int = 1
    iteration: int = 0
    chi: np.ndarray | None = None
    blur_kernel: np.ndarray | None = field(default=None, repr=False)
    coherence: np.ndarray | None = field(default=None, repr=False)  # per run: ``coherence.kernel``; None: coherent
    background: np.ndarray | None = None  # per run, a flat background fitted as it goes (intensity units); None: none
    faint: np.ndarray | None = field(default=None, repr=False)  # bool, where the background is fitted (unshifted)
    smoothing: np.ndarray | None = field(default=None, repr=False)  # OSS's Fourier-space filter now (``oss_filter``)


def project_magnitude(state: PhasingState) -> np.ndarray:
    """Fourier constraint: keep the phases of FFT(obj), impose the measured magnitude.

    With partial coherence or a flat background F is scaled by √(I/(|F|² ⊛ blur + b)), so that the whole model,
    not |F|, meets the data (a fixed point where it does); the background takes its EM step from the same ratio.
    Returns the new real-space estimate (a fresh array) and updates χ.
    """
    field_ = sfft.fftn(state.obj, axes=AXES, workers=-1)
    if _fused(field_, state.magnitude, state.measured, state.faint):
        _impose_fused(state, field_)
    else:
        _impose(state, field_)
    return sfft.ifftn(field_, axes=AXES, workers=-1, overwrite_x=True)


def _impose(state: PhasingState, field_: np.ndarray) -> None:
    """The modulus constraint on far fields, in place, with NumPy (the reference ``kernels`` is held to)."""
    modulus = coherence.modulus(field_, state.coherence, background=state.background)
    diff = modulus - state.magnitude
    if state.measured is not None:
        diff *= state.measured
    state.chi = np.sqrt((diff * diff).sum(AXES) / (state.magnitude**2).sum(AXES))
    np.maximum(modulus, 1e-12, out=modulus)
    if state.measured is None:
        np.divide(state.magnitude, modulus, out=modulus)
    else:  # unmeasured voxels are free: the model keeps its own modulus there
        modulus = np.where(state.measured, state.magnitude / modulus, np.float32(1))
    if state.background is not None:
        state.background = coherence.background_update(state.background, modulus**2, state.faint)
    field_ *= modulus


def _impose_fused(state: PhasingState, field_: np.ndarray) -> None:
    """The same in one loop over the voxels (``kernels``); the blur's convolution stays an FFT."""
    blurred = centre = None
    if state.coherence is not None:
        blurred = np.ascontiguousarray(coherence.convolve(field_.real**2 + field_.imag**2, state.coherence),
                                       np.float32)
        centre = coherence.centre(state.coherence, field_.shape[-1])
    squared, faint_ratio = kernels.impose_magnitude(field_, state.magnitude, state.measured, blurred, centre,
                                                    state.background, state.faint)
    state.chi = np.sqrt(squared / (state.magnitude**2).sum(AXES)).astype(np.float32)
    if state.background is not None:
        state.background = (state.background * faint_ratio).astype(np.float32)


def _fused(*arrays) -> bool:
    """Whether ``kernels`` can take these arrays (complex64 / float32 / bool, C-contiguous, one shape; None: none)."""
    given = [a for a in arrays if a is not None]
    return kernels.available() and all(isinstance(a, np.ndarray) and a.dtype in FUSED_TYPES for a in given) \
        and kernels.fits(*given)


FUSED_TYPES = (np.dtype(np.complex64), np.dtype(np.float32), np.dtype(bool))


def error_reduction(state: PhasingState) -> None:
    """ER: projected estimate, zero outside the support."""
    projected = project_magnitude(state)
    projected *= state.support
    state.obj = projected


def hybrid_input_output(state: PhasingState) -> None:
    """HIO: projected estimate inside the support, ρ − β·ρ' outside."""
    projected = project_magnitude(state)
    if _fused(projected, state.obj, state.support):
        state.obj = kernels.hio_update(projected, state.obj, state.support, state.beta)
        return
    outside = state.obj - state.beta * projected
    state.obj = np.where(state.support, projected, outside).astype(np.complex64, copy=False)


def blur_kernel(shape, sigma: float) -> np.ndarray:
    """Fourier-space Gaussian (rfftn layout) that blurs a volume of ``shape`` by ``sigma`` voxels."""
    freqs = np.meshgrid(*[sfft.fftfreq(n) for n in shape[:-1]], sfft.rfftfreq(shape[-1]), indexing="ij")
    q2 = sum(f**2 for f in freqs)
    return np.exp(-2 * np.pi**2 * sigma**2 * q2).astype(np.float32)


def support_from(amplitude: np.ndarray, threshold: float, kernel: np.ndarray) -> np.ndarray:
    """Shrink-wrap support of a batch: blurred amplitude above ``threshold`` of its maximum."""
    blurred = sfft.irfftn(sfft.rfftn(amplitude, axes=AXES, workers=-1) * kernel,
                          s=amplitude.shape[1:], axes=AXES, workers=-1)
    return blurred > threshold * blurred.max(axis=AXES, keepdims=True)


def shrink_wrap(state: PhasingState, inside: bool = False) -> None:
    """New support from the current estimate (``inside``: from its part in the support alone, for OSS, whose
    smoothed outside is not driven to zero); the blur kernel is computed once per run."""
    if state.blur_kernel is None:
        state.blur_kernel = blur_kernel(state.obj.shape[1:], state.sigma)
    amplitude = np.abs(state.obj * state.support if inside else state.obj)
    state.support = support_from(amplitude, state.threshold, state.blur_kernel)


def uniform_density(obj: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """A restart of each run (B, …) with its phase kept and its amplitude made flat: the mean amplitude on the
    voxels above ``threshold`` of its peak, zero elsewhere; (object, support). Why: on photon-limited data a
    search ends with an amplitude textured by noise, which holds the phase in a basin the withheld voxels do not
    prefer; ER from the same phase on a crystal of uniform density (as a single crystal nearly is) often leaves
    it. Kept only where it predicts the withheld voxels better (``shared.solver.plans``: ``flatten``)."""
    amp = np.abs(obj)
    inside = amp > threshold * amp.max(axis=AXES, keepdims=True)
    mean = (amp * inside).sum(axis=AXES, keepdims=True) / np.maximum(inside.sum(axis=AXES, keepdims=True), 1)
    return (inside * mean * np.exp(1j * np.angle(obj))).astype(np.complex64), inside


def relaxed_averaged_alternating_reflections(state: PhasingState) -> None:
    """RAAR (Luke 2005): projected estimate inside the support, β·ρ + (1 − 2β)·ρ' outside; steadier than HIO
    with noisy data."""
    projected = project_magnitude(state)
    outside = state.beta * state.obj + (1 - 2 * state.beta) * projected
    state.obj = np.where(state.support, projected, outside).astype(np.complex64, copy=False)


def oversampling_smoothness(state: PhasingState) -> None:
    """OSS (Rodriguez et al. 2013): HIO, then the region outside the support smoothed by a Gaussian in Fourier
    space (``state.smoothing``, set by ``ScheduleRun`` from wide to narrow); the inside keeps the projection.
    Why: HIO's outside holds high-frequency noise that pulls a search into wrong basins on noisy data; smoothing
    it, ever harder, lets the support's oversampling act as a constraint."""
    projected = project_magnitude(state)
    hio = np.where(state.support, projected, state.obj - state.beta * projected)
    smooth = sfft.ifftn(sfft.fftn(hio, axes=AXES, workers=-1) * state.smoothing, axes=AXES, workers=-1,
                        overwrite_x=True)
    state.obj = np.where(state.support, projected, smooth).astype(np.complex64, copy=False)


OSS_STAGES = 10  # the filter narrows in this many steps over a schedule's OSS iterations


def oss_filter(shape, stage: int, stages: int = OSS_STAGES) -> np.ndarray:
    """OSS's filter at ``stage`` of ``stages``: exp(−k²/2α²) (k in Fourier pixels, fftn layout), α from the
    grid's size n (almost no smoothing) down to 1/n (the outside made nearly flat) in equal steps."""
    n = max(shape)
    alpha = np.linspace(n, 1 / n, stages)[min(stage, stages - 1)]
    k = np.meshgrid(*[sfft.fftfreq(m) * m for m in shape], indexing="ij")
    return np.exp(-sum(c**2 for c in k) / (2 * alpha**2)).astype(np.float32)


ALGORITHMS = {"ER": error_reduction, "HIO": hybrid_input_output, "RAAR": relaxed_averaged_alternating_reflections,
              "OSS": oversampling_smoothness}


def parse_schedule(text: str) -> list[tuple[str, int]]:
    """'3*(20*ER+180*HIO)+20*ER' → [('ER', 20), ('HIO', 180), …, ('ER', 20)]."""

    def walk(node):
        if isinstance(node, ast.Name) and node.id in ALGORITHMS:
            return [(node.id, 1)]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return walk(node.left) + walk(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Pow)):
            count, body = (node.left, node.right) if isinstance(node.left, ast.Constant) else (node.right, node.left)
            if not (isinstance(count, ast.Constant) and isinstance(count.value, int) and count.value >= 0):
                raise InputError(f"schedule: repeat counts must be whole numbers, got {ast.unparse(count)}")
            steps = walk(body)
            if len(steps) == 1:
                return [(steps[0][0], steps[0][1] * count.value)]
            return steps * count.value
        raise InputError(f"schedule: cannot read {ast.unparse(node)!r}; use ER, HIO, RAAR, OSS, + and *")

    try:
        tree = ast.parse(text.replace(" ", ""), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"schedule {text!r} is not valid: {exc.msg}") from None
    steps = [(name, n) for name, n in walk(tree.body) if n > 0]
    if not steps:
        raise InputError(f"schedule {text!r} has no iterations")
    return steps


def initial_support(magnitude_unshifted: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Support from the autocorrelation (twice the object's extent), batch-first."""
    auto = np.abs(sfft.ifftn(magnitude_unshifted**2, axes=AXES, workers=-1))
    auto = sfft.fftshift(auto, axes=AXES)
    return auto > threshold * auto.max(axis=AXES, keepdims=True)


def random_start(support: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random amplitude and phase inside the support."""
    amp = rng.uniform(0, 1, support.shape).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, support.shape).astype(np.float32)
    return (support * amp * np.exp(1j * phase)).astype(np.complex64)


@dataclass
class ScheduleRun:
    """One schedule in progress: it can stop after any iteration and go on later (a preempted
    refinement keeps ``done`` and ``mean`` in its checkpoint), with the same result as one run."""

    schedule: str
    average_last: int = 20
    done: int = 0  # iterations of this schedule so far (a state may run several schedules in turn)
    mean: np.ndarray | None = None  # running sum of the last ``average_last`` iterates
    oss_stage: int = field(default=-1, repr=False)  # the OSS filter's stage ``state.smoothing`` holds

    def __post_init__(self):
        self.steps = parse_schedule(self.schedule)
        self.total = sum(n for _, n in self.steps)
        # OSS iterations before each iteration (OSS's filter stage follows it), for a schedule that has OSS
        self.oss_before = np.cumsum([0] + [name == "OSS" for name, n in self.steps for _ in range(n)]) \
            if any(name == "OSS" for name, _ in self.steps) else None
        self.average_last = max(1, min(self.average_last, self.total))

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def advance(self, state: PhasingState, iterations: int | None = None, progress=None,
                history: list | None = None) -> None:
        """Up to ``iterations`` more iterations (None: to the end)."""
        if self.mean is None:
            self.mean = np.zeros_like(state.obj)
        stop = self.total if iterations is None else min(self.total, self.done + iterations)
        while self.done < stop:
            name = self._algorithm_at(self.done)
            if name == "OSS":
                self._smooth(state)
            ALGORITHMS[name](state)
            state.iteration += 1
            self.done += 1
            if state.shrink_every and state.iteration % state.shrink_every == 0 and self.done < self.total:
                shrink_wrap(state, inside=name == "OSS")
            if self.done > self.total - self.average_last:
                self.mean += state.obj
            if progress is not None:
                progress(1)
            if history is not None:
                history.append((time.perf_counter(), state.chi.copy()))

    def _smooth(self, state: PhasingState) -> None:
        """OSS's filter for this iteration: its stage is how far the schedule's OSS iterations have got."""
        stage = int(self.oss_before[self.done]) * OSS_STAGES // int(self.oss_before[-1])
        if stage != self.oss_stage or state.smoothing is None:
            state.smoothing, self.oss_stage = oss_filter(state.obj.shape[1:], stage), stage

    def _algorithm_at(self, iteration: int) -> str:
        for name, count in self.steps:
            if iteration < count:
                return name
            iteration -= count
        raise IndexError(iteration)

    def result(self) -> np.ndarray:
        """The estimate averaged over the last ``average_last`` iterations."""
        return self.mean / self.average_last


def run_schedule(state: PhasingState, schedule: str = PAPER_SCHEDULE, average_last: int = 20,
                 progress=None, history: list | None = None) -> np.ndarray:
    """Run the schedule; return the estimate averaged over the last iterations.

    ``history``, if given, receives (perf_counter time, χ per scan) after every iteration.
    """
    run = ScheduleRun(schedule, average_last)
    run.advance(state, progress=progress, history=history)
    return run.result()


def box_support(shape) -> np.ndarray:
    """A centred box of half the array per axis (the last three axes): the textbook initial support."""
    support = np.zeros(shape, bool)
    support[(Ellipsis,) + tuple(slice(n // 4, n // 4 + max(1, n // 2)) for n in shape[-3:])] = True
    return support


def phase_retrieve(intensity: np.ndarray, schedule: str = PAPER_SCHEDULE, starts: int = 1,
                   seed: int = 0, beta: float = 0.9, sigma: float = 1.0, threshold: float = 0.1,
                   shrink_every: int = 20, start: np.ndarray | None = None, progress=None, history=None,
                   initial: str = "box"):
    """ER/HIO on a batch of centred intensities (B, n, n, n) → (objects, supports, χ).

    The careful user's yardstick (as cohere runs it): a centred box of half the array as the initial
    support (``initial`` "autocorrelation": the autocorrelation's support, fragile), a random phase
    inside it, shrink-wrap every ``shrink_every`` iterations (σ ``sigma``, ``threshold``).
    With ``starts`` > 1 each scan is retrieved from several random starts at
    once and the start with the lowest final χ is kept. ``start`` (complex,
    centred like the objects) replaces the random start, e.g. a network's
    prediction; its support is then the thresholded start amplitude.
    """
    intensity = np.asarray(intensity, np.float32)
    batch = intensity.shape[0]
    magnitude = sfft.ifftshift(np.sqrt(np.clip(intensity, 0, None)), axes=AXES)
    magnitude = np.repeat(magnitude, starts, axis=0)
    rng = np.random.default_rng(seed)
    if start is None:
        if initial == "box":
            support = box_support(magnitude.shape)
            obj = (support * np.exp(1j * rng.uniform(-np.pi, np.pi, support.shape))).astype(np.complex64)
        else:
            support = initial_support(magnitude, threshold)
            obj = random_start(support, rng)
        scale = np.sqrt((magnitude**2).sum(AXES) / np.maximum((np.abs(obj)**2).sum(AXES) * np.prod(obj.shape[1:]), 1e-30))
        obj *= scale.reshape(-1, 1, 1, 1).astype(np.float32)
    else:
        obj = np.repeat(np.asarray(start, np.complex64), starts, axis=0)
        amp = np.abs(obj)
        support = amp > threshold * amp.max(axis=AXES, keepdims=True)
        # Put the start's scale on the data's: |FFT| sum of squares equals the measured one.
        scale = np.sqrt((magnitude**2).sum(AXES) / np.maximum((amp**2).sum(AXES) * np.prod(amp.shape[1:]), 1e-30))
        obj *= scale.reshape(-1, 1, 1, 1).astype(np.float32)
    state = PhasingState(magnitude, obj, support, None, beta, sigma, threshold, shrink_every)
    result = run_schedule(state, schedule, progress=progress, history=history)
    final = project_chi(result, magnitude)
    pick = final.reshape(batch, starts).argmin(axis=1) + np.arange(batch) * starts
    return result[pick], state.support[pick], final[pick]


def project_chi(obj: np.ndarray, magnitude_unshifted: np.ndarray, measured: np.ndarray | None = None,
                blur: np.ndarray | None = None, background: np.ndarray | None = None) -> np.ndarray:
    """χ of objects against unshifted magnitudes: ‖|FFT ρ| − M‖ / ‖M‖ per scan, over measured voxels (the model
    blurred by ``blur``, a ``coherence.kernel``, and with a flat ``background`` per scan, where given)."""
    diff = coherence.modulus(sfft.fftn(obj, axes=AXES, workers=-1), blur, background=background) - magnitude_unshifted
    if measured is not None:
        diff = diff * measured
    return np.sqrt((diff**2).sum(AXES) / (magnitude_unshifted**2).sum(AXES))


FREE_FRACTION = 0.05  # of the measured voxels, withheld from every projection and gradient (cross-validation)
FREE_SEED = 20261203  # one fixed draw per grid shape: a resumed or repeated run withholds the same voxels


def free_voxels(shape, fraction: float = FREE_FRACTION, seed: int = FREE_SEED) -> np.ndarray:
    """A random ``fraction`` of a grid's voxels (bool, ``shape``), the same for every call with this shape:
    crystallography's R-free set, for χ that no fit can lower by fitting noise."""
    return np.random.default_rng([seed, *shape]).random(shape) < fraction


def masked_chi(obj: np.ndarray, magnitude_unshifted: np.ndarray, mask: np.ndarray,
               blur: np.ndarray | None = None, background: np.ndarray | None = None) -> np.ndarray:
    """χ per scan over the ``mask`` voxels alone (unshifted frame), normalised by the data there:
    ‖(|FFT ρ| − M)·mask‖ / ‖M·mask‖ (the model as ``project_chi``'s)."""
    mask = np.broadcast_to(mask, magnitude_unshifted.shape)
    diff = (coherence.modulus(sfft.fftn(obj, axes=AXES, workers=-1), blur, background=background)
            - magnitude_unshifted) * mask
    return np.sqrt((diff**2).sum(AXES) / np.maximum(((magnitude_unshifted * mask) ** 2).sum(AXES), 1e-30))


def write_back(full: PhasingState, part: PhasingState, index: np.ndarray) -> None:
    """The runs ``index`` of ``full`` take on where ``part`` (``select(full, index)``, run on alone) got to."""
    if part is full:
        return
    full.obj, full.support = np.array(full.obj), np.array(full.support)
    full.obj[index], full.support[index], full.iteration = part.obj, part.support, part.iteration
    if full.background is not None:
        full.background = np.array(full.background)
        full.background[index] = part.background
    if full.chi is not None and part.chi is not None:
        full.chi = np.array(full.chi)
        full.chi[index] = part.chi


def select(state: PhasingState, index: np.ndarray) -> PhasingState:
    """The runs ``index`` of a batch, to go on alone (dropping starts that lost)."""
    pick = lambda a: None if a is None else a[index]  # noqa: E731
    threshold = state.threshold[index] if np.ndim(state.threshold) else state.threshold  # per run, or one
    return PhasingState(state.magnitude[index], state.obj[index], state.support[index], pick(state.measured),
                        state.beta, state.sigma, threshold, state.shrink_every, state.iteration,
                        pick(state.chi), state.blur_kernel, pick(state.coherence), pick(state.background),
                        pick(state.faint))
