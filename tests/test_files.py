"""Reading every input format; writing HDF5, CXI and VTK."""

import base64
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
import tifffile

from shared.physics.errors import InputError
from shared.wire.files import read_intensity, write_result, write_vti


@pytest.fixture
def volume():
    return np.random.default_rng(0).poisson(5, (12, 10, 8)).astype(np.float32)


def test_each_format_reads_the_same(tmp_path, volume):
    np.save(tmp_path / "a.npy", volume)
    np.savez(tmp_path / "b.npz", meta=np.arange(3), data=volume)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["entry/scalar"] = 1.0
        f["entry/data/data"] = volume
    with h5py.File(tmp_path / "d.cxi", "w") as f:
        f["entry_1/data_1/data"] = volume
    tifffile.imwrite(tmp_path / "e.tif", volume)
    (tmp_path / "frames").mkdir()
    for k, frame in enumerate(volume):
        tifffile.imwrite(tmp_path / "frames" / f"f{k:03d}.tif", frame)
    for name in ["a.npy", "b.npz", "c.h5", "d.cxi", "e.tif", "frames"]:
        batch, was_batch = read_intensity(tmp_path / name)
        assert batch.shape == (1, 12, 10, 8) and not was_batch and np.array_equal(batch[0], volume), name
    batch, was_batch = read_intensity(tmp_path / "c.h5", dataset="entry/data/data")
    assert np.array_equal(batch[0], volume)


def test_batch_is_4d(tmp_path, volume):
    np.save(tmp_path / "b.npy", np.stack([volume, volume]))
    batch, was_batch = read_intensity(tmp_path / "b.npy")
    assert batch.shape == (2, 12, 10, 8) and was_batch


@pytest.mark.parametrize("content, message", [
    (np.ones((4, 4)), "2D"), (np.full((4, 4, 4), np.nan), "NaN"), (-np.ones((4, 4, 4)), "negative"),
    (np.ones((4, 4, 4), complex), "dtype"), (np.ones((0, 4, 4)), "empty"),
])
def test_bad_content(tmp_path, content, message):
    np.save(tmp_path / "x.npy", content)
    with pytest.raises(InputError, match=message):
        read_intensity(tmp_path / "x.npy")


def test_bad_files(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "x.txt").write_text("1 2 3")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5 at all")
    for name, message in [("empty.npy", "empty"), ("x.txt", "unknown file type"), ("broken.h5", "cannot read"),
                          ("missing.npy", "no such file")]:
        with pytest.raises(InputError, match=message):
            read_intensity(tmp_path / name)


def test_write_h5_cxi_and_vti(tmp_path):
    amp = np.random.default_rng(1).random((2, 6, 6, 6)).astype(np.float32)
    phase = np.zeros_like(amp)
    write_result(tmp_path / "r.h5", amp, phase, amp > 0.5, {"chi": np.array([0.1, 0.2]), "method": "test"})
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["amplitude"].shape == (2, 6, 6, 6) and f.attrs["method"] == "test"
    write_result(tmp_path / "r.cxi", amp[0], phase[0] + 0.5, amp[0] > 0.5, {"method": "test"}, fmt="cxi")
    with h5py.File(tmp_path / "r.cxi") as f:
        data = f["entry_1/image_1/data"][()]
        assert np.iscomplexobj(data) and np.allclose(np.angle(data), 0.5, atol=1e-6)
    write_vti(tmp_path / "r.vti", {"amplitude": amp[0]}, spacing=(2, 2, 2))
    root = ET.parse(tmp_path / "r.vti").getroot()
    blob = base64.b64decode(root.find(".//DataArray").text)
    values = np.frombuffer(blob[8:], np.float32).reshape((6, 6, 6), order="F")
    assert np.array_equal(values, amp[0])
