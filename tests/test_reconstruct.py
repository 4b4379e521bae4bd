"""`cdi-live reconstruct` with the shipped weights: a real check, not a hard-coded one."""

import subprocess

import h5py
import numpy as np
import pytest

from shared.nn.inference import Predictor
from shared.physics import crystals, downsample, metrics, phasing
from tests.conftest import real_file
from tests.test_cli import cli


@pytest.fixture(scope="module")
def predictor():
    return Predictor()


def test_shipped_weights_beat_zero_phase(predictor):
    scans = [crystals.simulated_scan(32, 4242, i, i, True, (1e6, 1e8)) for i in range(8)]
    intensity = np.stack([s[0] for s in scans])
    truth = [s[1] * np.exp(1j * s[2]) for s in scans]
    result = predictor.reconstruct(intensity)
    nn_phase, zero_phase, nn_amp = [], [], []
    for a, p, t in zip(result.amplitude, result.phase, truth):
        e = metrics.errors(a * np.exp(1j * p), t)
        nn_phase.append(e["phase"]), nn_amp.append(e["amplitude"])
        zero_phase.append(metrics.errors(np.abs(t).astype(np.complex64), t)["phase"])
    assert np.median(nn_phase) < np.median(zero_phase)
    assert np.median(nn_amp) < 0.5


def test_paper_example_gives_compact_support(predictor):
    magnitude = np.load(real_file("paper-example/ft_downsampled_32.npy"))
    result = predictor.reconstruct((magnitude.astype(np.float32) ** 2)[None])
    filled = result.support[0].mean()
    assert 0.005 < filled < 0.35  # a crystal, not the whole box and not nothing
    assert result.chi[0] < 1.0


def test_raw_aps_scan_goes_through(predictor):
    import numpy as _np

    with _np.load(real_file("aps-34idc-scan54/frames.npz")) as z:
        frames = z["frames"]
    net_in = downsample.network_input(frames.astype(np.float32))
    assert net_in.shape == (32, 32, 32)
    amp, phase = predictor.predict_magnitudes(net_in[None])
    assert np.isfinite(amp).all() and np.isfinite(phase).all()


def test_cli_batch_and_input_grid(tmp_path):
    assert cli("simulate", "--count", 2, "--size", 48, "--seed", 3, "--photons", "1e7", "--out",
               tmp_path / "s.h5").returncode == 0
    result = cli("reconstruct", tmp_path / "s.h5", "--out", tmp_path / "r.h5", "--refine", "--refine-steps", 20)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["amplitude"].shape == f["phase"].shape == (2, 48, 48, 48)
        assert f["nn/amplitude"].shape == (2, 48, 48, 48) and "refined/chi" in f
        assert np.all(f["refined/chi"][()] <= f["nn/chi"][()] + 1e-6)
        assert f.attrs["stage"] == "refined"


@pytest.mark.parametrize("args, message", [
    (["small.npy", "--out", "o.h5"], "at least 32"),
    (["big.npy", "--out", "o.h5", "--weights", "nope.weights.h5"], "no such weights"),
    (["big.npy", "--out", "o.h5", "--refine", "--time-budget", "-1"], "must be positive"),
])
def test_bad_input(tmp_path, args, message):
    np.save(tmp_path / "small.npy", np.ones((16, 40, 40), np.float32))
    np.save(tmp_path / "big.npy", np.ones((40, 40, 40), np.float32))
    result = cli("reconstruct", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
