"""The command-line contract, run as a user would: the installed ``cdi-live``."""

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

CLI = shutil.which("cdi-live") or str(Path(sys.executable).parent / "cdi-live")


def cli(*args, cwd=None):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_subcommands():
    out = cli("--help").stdout
    for name in ["simulate", "phase-retrieve"]:
        assert name in out


def test_simulate_contract(tmp_path):
    result = cli("simulate", "--count", 8, "--size", 32, "--seed", 1, "--photons", 0, "--out", tmp_path / "sim.h5")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "sim.h5") as f:
        intensity, amp, phase = f["intensity"][()], f["amplitude"][()], f["phase"][()]
        assert f.attrs["seed"] == 1 and "params" in f
    assert intensity.shape == amp.shape == phase.shape == (8, 32, 32, 32)
    model = np.abs(np.fft.fftshift(np.fft.fftn(amp * np.exp(1j * phase), axes=(1, 2, 3)), axes=(1, 2, 3))) ** 2
    assert np.allclose(model, intensity, rtol=1e-4, atol=1e-4 * intensity.max())


def test_simulate_a_family_for_training(tmp_path):
    """--family: the evaluation's crystals as training data, global phase removed, the measurement recorded."""
    result = cli("simulate", "--family", "fill", "--count", 4, "--seed", 3, "--out", tmp_path / "fill.h5")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "fill.h5") as f:
        intensity, amp, phase = f["intensity"][()], f["amplitude"][()], f["phase"][()]
        assert f.attrs["family"] == "fill" and f["params/kind"][0].decode() in ("sphere", "rod", "platelet")
        photons, blur = f["params/photons"][()], f["params/blur"][()]
    assert photons[0] == 0 and blur[0] == 0 and photons[1] > 0  # scan 0 noise-free and sharp, scan 1 counted
    obj = amp * np.exp(1j * phase)
    model = np.abs(np.fft.fftshift(np.fft.fftn(obj[0]))) ** 2
    assert np.allclose(model, intensity[0], rtol=1e-3, atol=1e-4 * intensity[0].max())
    mean_phase = np.angle(np.sum(amp * obj, axis=(1, 2, 3)))
    assert np.allclose(mean_phase, 0, atol=1e-5)
    assert cli("simulate", "--family", "nope", "--out", tmp_path / "x.h5").returncode == 2


def test_simulate_noise_and_controls(tmp_path):
    result = cli("simulate", "--count", 4, "--seed", 2, "--photons", "1e5:1e6", "--unstrained-fraction", 0.5,
                 "--out", tmp_path / "n.h5")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "n.h5") as f:
        assert np.all(f["intensity"][()] == np.round(f["intensity"][()]))
        strained = f["params/strained"][()]
        assert strained.sum() == 2
        assert np.array_equal(f["amplitude"][0], f["amplitude"][2])  # control shares the shape
        assert not f["phase"][2].any()


def test_phase_retrieve_contract(tmp_path):
    cli("simulate", "--count", 2, "--seed", 4, "--out", tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        np.save(tmp_path / "in.npy", f["intensity"][()])
    result = cli("phase-retrieve", tmp_path / "in.npy", "--out", tmp_path / "out.h5", "--vti", tmp_path / "o.vti")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["amplitude"].shape == f["phase"].shape == (2, 32, 32, 32)
        assert f["amplitude"].dtype == np.float32 and f["support"].dtype == bool
        assert len(f.attrs["chi"]) == 2 and f.attrs["method"] == "ER/HIO"
    assert (tmp_path / "o.vti").stat().st_size > 1000


@pytest.mark.parametrize("make, name", [
    (lambda p: np.save(p, np.ones((4, 4))), "flat.npy"),
    (lambda p: np.save(p, np.full((16, 16, 16), np.nan)), "nan.npy"),
    (lambda p: np.save(p, -np.ones((16, 16, 16))), "neg.npy"),
    (lambda p: p.write_bytes(b""), "empty.npy"),
    (lambda p: p.write_text("x"), "data.xyz"),
    (lambda p: None, "missing.npy"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, make, name):
    make(tmp_path / name)
    result = cli("phase-retrieve", tmp_path / name, "--out", tmp_path / "o.h5")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("args", [
    ["simulate", "--count", "-3", "--out", "x.h5"],
    ["simulate", "--photons", "lots", "--out", "x.h5"],
    ["phase-retrieve", "in.npy", "--out", "o.h5", "--schedule", "3*FOO"],
    ["nonsense"],
])
def test_bad_options_are_one_line_exit_2(tmp_path, args):
    np.save(tmp_path / "in.npy", np.ones((16, 16, 16)))
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
