"""Quality metrics that respect BCDI's ambiguities.

|FFT(ρ)| does not change under
- a global phase offset: ρ → ρ·e^{ic};
- a translation, also sub-voxel: ρ(r) → ρ(r − t) (a phase ramp in reciprocal space);
- the twin image: ρ(r) → conj(ρ(−r));
and a linear phase ramp in real space only moves the Bragg peak, which the
crop re-centres. Errors against a known truth are therefore taken after
removing all four, choosing the better of the estimate and its twin.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import optimize
import scipy.ndimage as ndi

from shared.physics import coherence

AXES3 = (0, 1, 2)


def model_modulus(estimate: np.ndarray, blur=None) -> np.ndarray:
    """The modulus an answer predicts, centred as the data: |fftshift(fftn(ρ))|, or with a partial-coherence
    ``blur`` (σ per axis, voxels) √(|F|² ⊛ G_σ)."""
    multiplier = coherence.of(estimate.shape, None if blur is None else [blur])
    return sfft.fftshift(coherence.modulus(sfft.fftn(estimate, workers=-1)[None], multiplier)[0])


def chi(estimate: np.ndarray, measured_intensity: np.ndarray, measured: np.ndarray | None = None,
        blur=None, background: float = 0.0) -> float:
    """Fourier-magnitude misfit ‖|F(ρ)| − √I‖ / ‖√I‖ after the best scale factor, with
    |F| = |fftshift(fftn(ρ))|, over the ``measured`` voxels (all when None). ``blur``: σ per axis (voxels) of
    the partial-coherence blur the answer was fitted with; the model is then √(|F|² ⊛ G_σ). ``background``: the
    flat background it was fitted with (the intensity's units), added to the scaled model: √(s²·|F|² + b)."""
    model = model_modulus(estimate, blur)
    data = np.sqrt(np.clip(measured_intensity, 0, None))
    if measured is not None:
        model, data = model[measured], data[measured]
    norm = max(np.linalg.norm(data), 1e-30)
    scale = (model * data).sum() / max((model**2).sum(), 1e-30)
    if not background:
        return float(np.linalg.norm(scale * model - data) / norm)
    power = model.astype(np.float64) ** 2
    misfit = lambda s2: np.linalg.norm(np.sqrt(s2 * power + background) - data)  # noqa: E731
    best = optimize.minimize_scalar(misfit, bounds=(0.0, 4 * scale**2), method="bounded",
                                    options={"xatol": 1e-6 * scale**2})
    return float(min(best.fun, misfit(scale**2)) / norm)


def point_inversion(x: np.ndarray) -> np.ndarray:
    """x(−r) of a 3D array, inverted about index n//2 of each axis (the fftshift grid's centre)."""
    return np.roll(np.flip(x), 1, axis=AXES3)


def twin(obj: np.ndarray) -> np.ndarray:
    """conj(ρ(−r)) of a 3D object: same |FFT|."""
    return np.conj(point_inversion(obj))


def handedness(amplitude: np.ndarray, phase: np.ndarray) -> float:
    """A number whose sign flips under the twin: Σρφ³, or the shape's third moment along (1,1,1)
    when there is no strain (a twin maps φ(r) → −φ(−r) and ρ(r) → ρ(−r)).

    It picks one member of each twin pair, so that a network can be trained towards a
    single, canonical answer for a diffraction pattern both twins share.
    """
    if np.abs(phase[amplitude > 0.5 * amplitude.max()]).max(initial=0) > 1e-3:
        return float((amplitude * phase**3).sum())
    coords = np.indices(amplitude.shape).reshape(3, -1).astype(float)
    weights = amplitude.ravel() / max(amplitude.sum(), 1e-30)
    diagonal = coords.sum(axis=0)  # position along (1,1,1)
    along = diagonal - (diagonal * weights).sum()
    return float((weights * along**3).sum())


def canonical_twin(amplitude: np.ndarray, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ρ, φ) or its twin (ρ(−r), −φ(−r)), whichever has non-negative ``handedness``."""
    if handedness(amplitude, phase) >= 0:
        return amplitude, phase
    return point_inversion(amplitude), -point_inversion(phase)


def fourier_shift(obj: np.ndarray, shift) -> np.ndarray:
    """Translate by a (sub-voxel) shift, as a phase ramp in reciprocal space."""
    shifted = ndi.fourier_shift(sfft.fftn(obj, workers=-1), shift)
    return sfft.ifftn(shifted, workers=-1).astype(np.complex64)


def spans(mask: np.ndarray) -> list[tuple[int, int] | None]:
    """Per axis, the first and last index where ``mask`` holds anything (None for an empty axis)."""
    out = []
    for axis in range(mask.ndim):
        occupied = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append((int(occupied[0]), int(occupied[-1])) if occupied.size else None)
    return out


def centring_shift(obj: np.ndarray) -> list[int]:
    """The whole-voxel roll that puts the amplitude's centre of mass at index n//2 (circular centre of
    mass, so an object wrapped across the border is handled)."""
    amp = np.abs(obj)
    shift = []
    for axis, n in enumerate(obj.shape):
        profile = amp.sum(axis=tuple(a for a in range(3) if a != axis))
        angle = np.angle((profile * np.exp(2j * np.pi * np.arange(n) / n)).sum())
        shift.append(int(round(n // 2 - angle * n / (2 * np.pi))) % n)
    return shift


def centre_object(obj: np.ndarray) -> np.ndarray:
    """Roll the object so its amplitude's centre of mass sits at index n//2."""
    return np.roll(obj, centring_shift(obj), axis=AXES3)


def register_translation(reference: np.ndarray, moving: np.ndarray, upsample: int = 10) -> np.ndarray:
    """Sub-voxel shift that best aligns ``moving`` on ``reference`` (cross-correlation peak).

    Integer peak of the FFT cross-correlation of the amplitudes, then local
    searches on 1/``upsample`` and 1/``upsample``² voxel grids, evaluating the
    cross-correlation by direct DFT around the peak.
    """
    a, b = np.abs(reference), np.abs(moving)
    fa, fb = sfft.fftn(a, workers=-1), sfft.fftn(b, workers=-1)
    product = fa * np.conj(fb)
    xcorr = np.abs(sfft.ifftn(product, workers=-1))
    peak = np.array(np.unravel_index(np.argmax(xcorr), xcorr.shape), float)
    shape = np.array(a.shape)
    peak = np.where(peak > shape // 2, peak - shape, peak)
    freqs = [sfft.fftfreq(n) for n in a.shape]
    best = peak
    for step in (1.0 / upsample, 1.0 / upsample**2):  # coarse, then fine
        offsets = np.arange(-upsample, upsample + 1) * step
        for axis in range(3):  # coordinate-wise search around the current best
            values = _xcorr_along(product, freqs, best, axis, offsets)
            best = best.copy()
            best[axis] += offsets[int(np.argmax(values))]
    return best


def _xcorr_along(product: np.ndarray, freqs, shift, axis: int, offsets: np.ndarray) -> np.ndarray:
    """Cross-correlation values at ``shift`` moved along ``axis`` by each of ``offsets``, by direct DFT
    evaluation. The DFT is separable: the other two axes' ramps are summed out in one pass over the grid, so
    each trial costs one axis, not the grid (a full-grid answer of a large detector's window has 10⁷ voxels)."""
    letters = "ijk"
    others = [o for o in range(3) if o != axis]
    ramps = [np.exp(2j * np.pi * freqs[o] * shift[o]) for o in others]
    reduced = np.einsum(f"ijk,{letters[others[0]]},{letters[others[1]]}->{letters[axis]}", product, *ramps,
                        optimize=True)
    trials = np.exp(2j * np.pi * np.outer(shift[axis] + offsets, freqs[axis]))
    return np.real(trials @ reduced)


def remove_phase_ramp(obj: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Remove offset and linear phase ramp of ``obj`` relative to ``reference`` (weighted LSQ).

    The ramp is found coarsely from the peak of the Fourier transform of the
    phase difference, then refined by least squares on the wrapped residual.
    """
    ratio = obj * np.conj(reference) * weight
    spectrum = np.abs(sfft.fftn(ratio, s=[2 * n for n in obj.shape], workers=-1))
    k = np.array(np.unravel_index(np.argmax(spectrum), spectrum.shape), float)
    big = 2 * np.array(obj.shape)
    k = np.where(k > big // 2, k - big, k) / big  # cycles per voxel
    coords = np.indices(obj.shape).astype(float)
    ramp = 2 * np.pi * sum(k[i] * coords[i] for i in range(3))
    corrected = obj * np.exp(-1j * ramp)
    mask = weight > 0
    for _ in range(2):
        diff = np.angle(corrected * np.conj(reference))[mask]
        offset = np.angle((corrected * np.conj(reference) * weight).sum())
        diff = np.angle(np.exp(1j * (diff - offset)))
        design = np.column_stack([np.ones(diff.size)] + [c[mask] for c in coords])
        w = np.sqrt(weight[mask])
        coef, *_ = np.linalg.lstsq(design * w[:, None], diff * w, rcond=None)
        fit = coef[0] + offset + sum(coef[i + 1] * coords[i] for i in range(3))
        corrected = corrected * np.exp(-1j * fit)
    return corrected


def align(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Remove translation, phase offset and phase ramp of ``estimate`` relative to ``truth``."""
    shifted = fourier_shift(estimate, register_translation(truth, estimate))
    return remove_phase_ramp(shifted, truth, np.abs(truth) > 0.5 * np.abs(truth).max())


def align_either_twin(estimate: np.ndarray, reference: np.ndarray, support: np.ndarray) -> np.ndarray:
    """``estimate`` or its twin, aligned on ``reference`` (``align``): whichever has the smaller mean phase
    difference from it on ``support``. Two solutions of one pattern compared (a phase spread, a genetic algorithm's
    breeding) may be each other's twin."""
    candidates = [align(c, reference) for c in (estimate, twin(estimate))]
    misfit = [np.abs(np.angle(c * np.conj(reference)))[support].mean() for c in candidates]
    return candidates[int(np.argmin(misfit))]


def errors(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Amplitude and phase error of ``estimate`` against ``truth``, ambiguities removed.

    - ``amplitude``: ‖s·|ρ̂| − |ρ|‖ / ‖ρ‖ with the best scale s;
    - ``phase``: RMS wrapped phase difference (rad) inside the true support (amplitude
      above half its maximum), each voxel weighted by the estimate's amplitude there
      (relative to its maximum, at most 1). The phase of a voxel the estimate leaves
      empty is undefined: after sub-voxel alignment it is ringing, often ±π, so an
      unweighted RMS counts a shape error a second time, as a phase error;
    - ``phase_unweighted``: the plain RMS over the true support, for comparison.
    Both the estimate and its twin are aligned; the better one counts.
    """
    support = np.abs(truth) > 0.5 * np.abs(truth).max()
    best = None
    for candidate in (estimate, twin(estimate)):
        aligned = align(candidate, truth)
        amp, amp_true = np.abs(aligned), np.abs(truth)
        scale = (amp * amp_true).sum() / max((amp**2).sum(), 1e-30)
        amp_err = float(np.linalg.norm(scale * amp - amp_true) / np.linalg.norm(amp_true))
        dphi = np.angle(aligned * np.conj(truth))[support]
        weight = np.clip(amp[support] / max(amp.max(), 1e-30), 0, 1)
        result = {"amplitude": amp_err,
                  "phase": float(np.sqrt((weight * dphi**2).sum() / max(weight.sum(), 1e-30))) if dphi.size else 0.0,
                  "phase_unweighted": float(np.sqrt(np.mean(dphi**2))) if dphi.size else 0.0}
        if best is None or amp_err + result["phase"] < best["amplitude"] + best["phase"]:
            best = result
    return best


def canonical(obj: np.ndarray, threshold: float = 0.1, phase_outside: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Present an estimate the same way every time: (amplitude max 1, phase, support).

    Centred on the grid, amplitude scaled to a maximum of 1, and the phase offset
    chosen so the amplitude-weighted mean phase inside the support is zero. The
    phase is zeroed outside the support unless ``phase_outside`` (then
    amplitude·e^{i·phase} is the estimate itself, up to a shift and a constant).
    """
    obj = centre_object(obj)
    amp = np.abs(obj)
    peak = amp.max()
    support = amp > threshold * peak
    offset = np.angle((obj * support).sum())
    phase = np.angle(obj * np.exp(-1j * offset)) * (amp > 0 if phase_outside else support)
    return (amp / max(peak, 1e-30)).astype(np.float32), phase.astype(np.float32), support
