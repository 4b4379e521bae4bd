"""Physics-aware, twin-invariant loss of 3D-CDI-NN.

    loss = w_amp · MAE(ρ̂, ρ) + w_phase · ⟨1 − cos(φ̂ − φ)⟩_support + w_fourier · MAE(|F(ρ̂e^{iφ̂})|/max, M)

- The phase term compares wrapped differences, inside the true support only.
- The Fourier term is the paper's physics loss: the magnitude of the predicted
  object's far field against the full measured magnitude M (both max 1).
- Twin image: ρ(r)e^{iφ(r)} and ρ(−r)e^{−iφ(−r)} give the same diffraction, so no
  network can tell them apart; averaging the two targets would blur the phase to
  zero. Two remedies: canonical targets (the data pipeline shows one member of each
  pair, the default since w8f), or ``twin_invariant``: the supervised terms are taken
  per sample against the prediction and against its twin, and the smaller counts
  (the Fourier term is twin-invariant either way). The latter let the phase stall at
  zero: early on the choice between the two follows the blurry amplitude, not the
  phase, so the phase gradients of the two cancel.
"""

from __future__ import annotations

from keras import ops

from shared.nn.fft import far_field_magnitude, point_inversion

SPATIAL = (1, 2, 3)


def twin(x, negate: bool = False):
    """x(−r) on the fftshift grid, optionally negated (the twin's phase is −φ(−r))."""
    x = point_inversion(x)
    return -x if negate else x


def supervised_terms(amp_pred, phase_pred, amp_true, phase_true):
    """Per-sample amplitude MAE and in-support phase misfit, shape (batch,)."""
    amp_term = ops.mean(ops.abs(amp_pred - amp_true), axis=SPATIAL)
    support = ops.cast(amp_true > 0.5, amp_true.dtype)
    misfit = (1.0 - ops.cos(phase_pred - phase_true)) * support
    phase_term = ops.sum(misfit, axis=SPATIAL) / (ops.sum(support, axis=SPATIAL) + 1.0)
    return amp_term, phase_term


def fourier_term(amp_pred, phase_pred, magnitude):
    """Per-sample MAE between the predicted far-field magnitude and the measured one (max 1)."""
    model = far_field_magnitude(amp_pred, phase_pred)
    model = model / (ops.max(model, axis=SPATIAL, keepdims=True) + 1e-12)
    data = magnitude / (ops.max(magnitude, axis=SPATIAL, keepdims=True) + 1e-12)
    return ops.mean(ops.abs(model - data), axis=SPATIAL)


def cdi_loss(amp_pred, phase_pred, amp_true, phase_true, magnitude, weights=(1.0, 1.0, 1.0),
             twin_invariant: bool = True):
    """Mean over the batch of the physics-aware loss; also returns the terms."""
    amp_pred = ops.cast(amp_pred, "float32")
    phase_pred = ops.cast(phase_pred, "float32")
    w_amp, w_phase, w_fourier = weights
    amp_term, phase_term = supervised_terms(amp_pred, phase_pred, amp_true, phase_true)
    if twin_invariant:  # per sample, the smaller of prediction-vs-truth and twin-vs-truth
        amp_twin, phase_twin = supervised_terms(twin(amp_pred), twin(phase_pred, negate=True), amp_true, phase_true)
        use_twin = ops.cast(w_amp * amp_twin + w_phase * phase_twin < w_amp * amp_term + w_phase * phase_term,
                            "float32")
        amp_term = use_twin * amp_twin + (1 - use_twin) * amp_term
        phase_term = use_twin * phase_twin + (1 - use_twin) * phase_term
    terms = {"amplitude": ops.mean(amp_term), "phase": ops.mean(phase_term)}
    total = w_amp * terms["amplitude"] + w_phase * terms["phase"]
    if w_fourier:
        terms["fourier"] = ops.mean(fourier_term(amp_pred, phase_pred, magnitude))
        total = total + w_fourier * terms["fourier"]
    return total, terms
