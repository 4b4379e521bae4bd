"""3D-CDI-NN: shapes, the keras.ops FFT, the loss, save/load, training and resume."""

import itertools
import json

import keras
import numpy as np
import pytest

from shared.nn import loss, mirrors, network
from shared.nn.data import ShardBatches, flagged_pixels, truncate_frames
from shared.nn.fft import far_field_magnitude
from shared.nn.training import PhysicsAwareTrainer, TrainConfig, parse_schedule, train
from shared.physics import crystals, fourier


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(21)
    objs = [crystals.random_crystal(32, rng, max_strain=3e-3)[:2] for _ in range(4)]
    amp = np.stack([a for a, _ in objs]).astype(np.float32)
    phase = np.stack([p for _, p in objs]).astype(np.float32)
    mag = np.sqrt(np.stack([fourier.intensity(fourier.make_object(a, p)) for a, p in objs]))
    return amp, phase, (mag / mag.max(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


def test_shapes_and_ranges():
    model = network.build_model(width=4)
    out = model.predict_on_batch(np.random.default_rng(0).random((2, 32, 32, 32)).astype(np.float32))
    assert out["amplitude"].shape == out["phase"].shape == (2, 32, 32, 32)
    assert 0 <= out["amplitude"].min() and out["amplitude"].max() <= 1
    assert np.abs(out["phase"]).max() <= np.pi


def test_friedel_difference_is_the_strain_signature(batch):
    """Friedel's law: a strain-free crystal gives M(q) = M(−q), so the second channel is zero;
    strain breaks it. Frames not yet acquired (zeros) give no difference."""
    amp, phase, mag = batch
    strain_free = np.abs(np.fft.fftshift(np.fft.fftn(amp, axes=(1, 2, 3)), axes=(1, 2, 3)))
    channels = np.asarray(network.FriedelPairs()(strain_free / strain_free.max()))
    assert channels.shape == (4, 32, 32, 32, 2)
    assert np.abs(channels[..., 1]).max() < 1e-3 < channels[..., 0].max()
    strained = np.asarray(network.FriedelPairs()(mag))
    assert (np.abs(strained[..., 1]).max(axis=(1, 2, 3)) > 0.05).all()
    partial = np.asarray(network.FriedelPairs()(truncate_frames(mag, np.array([12] * 4))))
    assert not partial[:, 1:, ..., 1].any()  # frame 0 is its own mate along the rocking axis


def test_keras_fft_matches_numpy(batch):
    amp, phase, _ = batch
    ours = np.asarray(far_field_magnitude(keras.ops.convert_to_tensor(amp), keras.ops.convert_to_tensor(phase)))
    ref = np.abs(np.fft.fftshift(np.fft.fftn(amp * np.exp(1j * phase), axes=(1, 2, 3)), axes=(1, 2, 3)))
    assert np.allclose(ours, ref, rtol=1e-3, atol=1e-3 * ref.max())


def test_loss_is_zero_on_the_answer_and_twin_invariant(batch):
    amp, phase, mag = batch
    total, terms = loss.cdi_loss(amp, phase, amp, phase, mag)
    assert float(total) < 1e-3 and float(terms["fourier"]) < 1e-3
    twin_amp = np.asarray(loss.twin(amp))
    twin_phase = np.asarray(loss.twin(phase, negate=True))
    total_twin, _ = loss.cdi_loss(twin_amp, twin_phase, amp, phase, mag)
    assert float(total_twin) == pytest.approx(float(total), abs=1e-3)
    wrong, _ = loss.cdi_loss(amp, -phase, amp, phase, mag)  # not the twin: a real error
    assert float(wrong) > float(total) + 1e-3


def test_save_load_round_trip(tmp_path, batch):
    model = network.build_model(width=4)
    model.save_weights(tmp_path / "m.weights.h5")
    clone = network.build_model(width=4)
    clone.load_weights(tmp_path / "m.weights.h5")
    x = batch[2]
    a, b = model.predict_on_batch(x), clone.predict_on_batch(x)
    assert np.array_equal(a["amplitude"], b["amplitude"]) and np.array_equal(a["phase"], b["phase"])


def test_a_few_steps_lower_the_loss(batch):
    amp, phase, mag = batch
    keras.utils.set_random_seed(0)
    trainer = PhysicsAwareTrainer(network.build_model(width=4, dropout=0.0), (1.0, 1.0, 1.0))
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    y = {"amplitude": amp, "phase": phase, "magnitude": mag}
    first = trainer.train_on_batch(mag, y, return_dict=True)["loss"]
    for _ in range(15):
        last = trainer.train_on_batch(mag, y, return_dict=True)["loss"]
    assert last < 0.8 * first


def test_partial_frames_are_zero_and_renormalised(batch):
    _, _, mag = batch
    cut = truncate_frames(mag, np.array([10, 32, 20, 16]))
    assert not cut[0, 10:].any() and np.array_equal(cut[1], mag[1] / mag[1].max())
    assert np.allclose(cut.max(axis=(1, 2, 3)), 1.0)


def test_batches_are_deterministic(tmp_path):
    data = {"intensity": np.random.default_rng(0).random((8, 32, 32, 32)).astype(np.float32),
            "amplitude": np.random.default_rng(1).random((8, 32, 32, 32)).astype(np.float32),
            "phase": np.zeros((8, 32, 32, 32), np.float32)}
    a, b = ShardBatches(data, np.arange(8), 4, seed=3), ShardBatches(data, np.arange(8), 4, seed=3)
    a.epoch = b.epoch = 2
    assert np.array_equal(a[1][0], b[1][0])
    b.epoch = 3
    assert not np.array_equal(a[1][0], b[1][0])


def test_flaws_are_a_gap_beside_the_peak_filled_as_the_service_fills_it(batch):
    """A module gap through every frame within 4 pixels of the peak, inpainted by the service's own
    ``detector.inpaint``; targets keep the full magnitude."""
    from shared.wire import detector

    amp, phase, _ = batch
    intensity = np.stack([fourier.intensity(fourier.make_object(a, p)) for a, p in zip(amp, phase)])
    bad = flagged_pixels(intensity[0], np.random.default_rng(5))
    assert bad.any() and (bad == bad[:1]).all()  # the same pixels in every frame
    peak = np.unravel_index(intensity[0].argmax(), intensity[0].shape)
    columns = [np.flatnonzero(bad[0].all(axis=1 - k)) for k in range(2)]  # rows or columns wholly flagged
    assert any(len(c) and np.abs(c - peak[1 + k]).min() <= 6 for k, c in enumerate(columns))
    data = {"intensity": intensity, "amplitude": amp, "phase": phase}
    kept, flawed = (ShardBatches(data, np.arange(4), 4, seed=2, partial_probability=0, flaw_probability=p)[0]
                    for p in (0, 1))
    assert np.array_equal(kept[1]["magnitude"], flawed[1]["magnitude"])
    assert np.isfinite(flawed[0]).all() and np.allclose(flawed[0].max(axis=(1, 2, 3)), 1)
    for before, after in zip(kept[0], flawed[0]):  # the same symmetry drawn: only the flagged pixels differ
        bright = before > 0.01
        scale = np.median(after[bright] / before[bright])
        changed = ~np.isclose(after / scale, before, rtol=1e-3, atol=1e-6)
        assert 0 < changed.mean() <= (3 * 32 + 8) / 32 ** 2  # at most a 3-column gap and 8 dead pixels
    hole = np.zeros((32, 32, 32), bool)
    hole[:, :, 15:17] = True
    assert np.all(detector.inpaint(intensity[0], hole)[hole] > 0)  # the service's fill leaves no zeros


def test_targets_are_canonical_twins(batch):
    """Both members of a twin pair become the same target: the network is shown one answer."""
    from shared.physics import metrics

    amp, phase, _ = batch
    twins = [metrics.twin(a * np.exp(1j * p)) for a, p in zip(amp, phase)]
    intensity = np.stack([fourier.intensity(fourier.make_object(a, p)) for a, p in zip(amp, phase)])
    data = {"intensity": np.concatenate([intensity, intensity]),
            "amplitude": np.concatenate([amp, np.abs(twins)]).astype(np.float32),
            "phase": np.concatenate([phase, np.angle(twins)]).astype(np.float32)}
    _, targets = ShardBatches(data, np.arange(8), 8, augment=False)[0]
    assert np.allclose(targets["amplitude"][:4], targets["amplitude"][4:], atol=1e-5)
    assert np.allclose(targets["phase"][:4], targets["phase"][4:], atol=1e-4)
    assert all(metrics.handedness(a, p) >= 0 for a, p in zip(targets["amplitude"], targets["phase"]))


def test_resume_continues_exactly(tmp_path):
    """Interrupted after epoch 1 and resumed == uninterrupted, weight for weight."""
    import h5py

    scans = [crystals.simulated_scan(32, 77, i, i, True, (1e5, 1e6)) for i in range(20)]
    with h5py.File(tmp_path / "d.h5", "w") as f:
        for k, j in (("intensity", 0), ("amplitude", 1), ("phase", 2)):
            f[k] = np.stack([s[j] for s in scans])
    common = dict(data=[str(tmp_path / "d.h5")], width=4, batch_size=4, steps_per_epoch=2, precision="float32")
    train(TrainConfig(out=str(tmp_path / "full"), schedule="shape=1,joint=1", **common), progress=False)
    train(TrainConfig(out=str(tmp_path / "cut"), schedule="shape=1", **common), progress=False)
    train(TrainConfig(out=str(tmp_path / "cut"), schedule="shape=1,joint=1", **common), progress=False)
    full = network.build_model(4)
    full.load_weights(tmp_path / "full" / "final.weights.h5")
    cut = network.build_model(4)
    cut.load_weights(tmp_path / "cut" / "final.weights.h5")
    for w1, w2 in zip(full.get_weights(), cut.get_weights()):
        assert np.allclose(w1, w2, atol=1e-5)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert state["global_epoch"] == 2
    train(TrainConfig(out=str(tmp_path / "cut"), schedule="shape=1,joint=2", **common), progress=False)
    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert (state["stage"], state["epoch"], state["global_epoch"]) == (1, 2, 3)  # a longer last stage continues


def test_settle_is_the_joint_stage_at_a_tenth_of_the_rate():
    joint, settle = parse_schedule("joint=20,settle=8")
    assert (joint.epochs, settle.epochs) == (20, 8)
    assert settle.trainable == joint.trainable and settle.weights == joint.weights
    assert settle.learning_rate == pytest.approx(joint.learning_rate / 10)
    with pytest.raises(ValueError, match="NAME=EPOCHS"):
        parse_schedule("settle")


def test_fine_tuning_starts_from_the_given_weights(tmp_path):
    """--init: a run with no checkpoint begins at the given weights (a schedule of 0 epochs returns them)."""
    import h5py

    scans = [crystals.simulated_scan(32, 78, i, i, True, (1e5, 1e6)) for i in range(8)]
    with h5py.File(tmp_path / "d.h5", "w") as f:
        for k, j in (("intensity", 0), ("amplitude", 1), ("phase", 2)):
            f[k] = np.stack([s[j] for s in scans])
    start = network.build_model(4)
    start.set_weights([w + 0.01 for w in start.get_weights()])  # anything but a fresh initialisation
    start.save_weights(tmp_path / "start.weights.h5")
    common = dict(data=[str(tmp_path / "d.h5")], width=4, batch_size=4, steps_per_epoch=1, precision="float32")
    train(TrainConfig(out=str(tmp_path / "tuned"), schedule="joint=0", init=str(tmp_path / "start.weights.h5"),
                      **common), progress=False)
    tuned = network.build_model(4)
    tuned.load_weights(tmp_path / "tuned" / "final.weights.h5")
    for w1, w2 in zip(start.get_weights(), tuned.get_weights()):
        assert np.array_equal(w1, w2)
    from shared.nn.inference import load_model

    _, card = load_model(tmp_path / "tuned" / "final.weights.h5")  # the run's model.json names the architecture
    assert card["width"] == 4 and card["friedel"]


def test_a_mirrored_crystal_diffracts_into_the_mirrored_pattern(batch):
    """The symmetry mirror averaging rests on: |F| of ρ mirrored on any axes is |F| of ρ mirrored the same way."""
    amp, phase, mag = batch
    obj = (amp * np.exp(1j * phase)).astype(np.complex64)
    for axes in [axes for count in range(4) for axes in itertools.combinations((1, 2, 3), count)]:
        mirrored = np.sqrt(np.stack([fourier.intensity(o) for o in mirrors.mirror(obj, axes)]))
        np.testing.assert_allclose(mirrored / mirrored.max(axis=(1, 2, 3), keepdims=True),
                                   mirrors.mirror(mag, axes), atol=1e-5)


def test_mirror_averaging_keeps_an_answer_every_mirror_agrees_on(batch):
    """A network that answered each mirror image exactly (some as the twin, with any global phase) is averaged
    back to its plain answer."""
    amp, phase, _ = batch
    obj = (amp * np.exp(1j * phase)).astype(np.complex64)
    rng = np.random.default_rng(3)
    answers = []
    for k, axes in enumerate(mirrors.MIRRORS):
        answer = mirrors.mirror(obj, axes) * np.exp(1j * rng.uniform(-np.pi, np.pi))
        answers.append(mirrors.mirror(np.conj(answer), (1, 2, 3)) if k % 3 == 1 else answer)  # some twins
    answers = np.concatenate(answers)
    plain = answers[:len(obj)]
    a, p = mirrors.average(np.abs(answers), np.angle(answers))
    np.testing.assert_allclose(a, amp, atol=1e-5)
    inside = amp > 0.1
    np.testing.assert_allclose(np.angle(np.exp(1j * (p - np.angle(plain))))[inside], 0, atol=1e-4)
