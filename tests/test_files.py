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


def _frames_file(path, frames, kept, **filters):
    """A scan's frames as the ingest stores them: one chunk per frame, some never written."""
    import hdf5plugin

    from shared.wire import codecs

    with h5py.File(path, "w") as f:
        d = f.create_dataset("frames", frames.shape, frames.dtype, chunks=(1, *frames.shape[1:]), fillvalue=0,
                             **(filters or hdf5plugin.Bitshuffle(cname="lz4")))
        for k in kept:
            if filters:
                d[k] = frames[k]
            else:
                d.id.write_direct_chunk((k, 0, 0), codecs.encode(frames[k], "bslz4"))
        f["received"] = np.isin(np.arange(len(frames)), kept)


@pytest.mark.parametrize("filters", [{}, {"compression": "gzip"}], ids=["bslz4", "gzip"])
def test_a_window_of_stored_frames_is_what_slicing_reads(tmp_path, filters):
    """The refinement and the detector view read a large detector's window through ``FrameWindows``, which
    decodes a bslz4 chunk's rows alone: the same values as h5py's own slicing, unwritten frames zero,
    and (a virtual dataset over receivers' parts) each frame from the part that holds it."""
    from shared.wire import framefiles

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 60000, (5, 300, 70), dtype=np.uint32)  # many 8 KB blocks per frame, a partial last
    rows, cols = slice(97, 211), slice(9, 50)
    _frames_file(tmp_path / "one.h5", frames, [0, 1, 3, 4], **filters)
    with h5py.File(tmp_path / "one.h5", "r") as f, framefiles.FrameWindows(f) as stored:
        assert stored.own[1] is not bool(filters)  # bslz4: the chunk's rows; anything else: h5py
        got = stored.stack([0, 1, 3, 4], rows, cols)
        assert np.array_equal(got, f["frames"][:, rows, cols])
        assert not got[2].any()
        assert np.array_equal(stored.window(4, slice(290, 300), cols), frames[4, 290:300, cols])  # the last block
    (tmp_path / "scan").mkdir()
    _frames_file(tmp_path / "scan" / "frames-0.h5", frames, [0, 3], **filters)
    _frames_file(tmp_path / "scan" / "frames-1.h5", frames, [1, 4], **filters)
    framefiles.write_virtual(tmp_path / "scan", [tmp_path / "scan" / "frames-0.h5", tmp_path / "scan" / "frames-1.h5"], {})
    with h5py.File(tmp_path / "scan" / "frames.h5", "r") as f, framefiles.FrameWindows(f) as stored:
        assert np.array_equal(stored.stack(np.flatnonzero(f["received"][()]), rows, cols), f["frames"][:, rows, cols])
        assert not stored.window(2, rows, cols).any()
