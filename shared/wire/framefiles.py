"""A scan's raw frames across several receivers' files: one HDF5 virtual dataset, as the DECTRIS and
Odin (Diamond) file writers join theirs.

With N receivers on one stream each writes ``frames-<k>.h5`` (the frames ZeroMQ dealt it, at their
indices; the others are unwritten chunks). ``frames.h5`` then holds what a single receiver's file
holds — ``frames`` (virtual: each frame mapped from the part that received it, zeros where none
did), ``received`` (the union), the pixel mask, dark and flat field, and the ``start``/``started``/``end``
attributes — so every reader (refinement, detector view, restore from disk) reads it unchanged.
Source files are named relative to ``frames.h5``: the scan's folder can be moved or copied whole.
A download gets a self-contained copy (``self_contained``): chunks are copied as stored, never
decompressed. A window of the frames (a large detector's signal, the ROI) is read by ``FrameWindows``,
which decodes only the window's rows of each stored chunk.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from shared.wire import codecs

COPIED = ("pixel_mask", "dark", "flat_field")  # per-detector arrays, the same in every part


def part_name(receiver: int) -> str:
    return f"frames-{receiver}.h5"


def write_virtual(folder: Path, parts: list[Path], attributes: dict) -> np.ndarray:
    """``folder/frames.h5`` over the ``parts`` (existing files); returns the union of their ``received``."""
    held, shape, dtype = [], None, None
    for path in parts:
        with h5py.File(path, "r") as f:
            held.append(f["received"][()])
            shape, dtype = f["frames"].shape, f["frames"].dtype
    received = np.logical_or.reduce(held)
    layout = h5py.VirtualLayout(shape, dtype)
    for k in np.flatnonzero(received):
        owner = next(p for p, mask in zip(parts, held) if mask[k])
        layout[k] = h5py.VirtualSource(f"./{owner.name}", "frames", shape)[k]
    target = folder / "frames.h5"
    partial = folder / ".frames.h5.partial"
    with h5py.File(partial, "w") as out:
        out.create_virtual_dataset("frames", layout, fillvalue=0)
        out.create_dataset("received", data=received)
        with h5py.File(parts[0], "r") as first:
            for name in COPIED:
                if name in first:
                    first.copy(first[name], out, name)
        out.attrs["receivers"] = [p.name for p in parts]
        for key, value in attributes.items():
            out.attrs[key] = value
    os.replace(partial, target)  # readers see the whole file or none
    return received


def is_virtual(path: Path) -> bool:
    with h5py.File(path, "r") as f:
        return "frames" in f and f["frames"].is_virtual


def self_contained(path: Path) -> Path:
    """``path`` itself, or (a virtual ``frames``) a copy beside it holding the frames, made once: each
    received frame's chunk is copied as stored (Bitshuffle-LZ4), as one receiver's file holds it."""
    if not is_virtual(path):
        return path
    whole = path.with_name("frames-whole.h5")
    if whole.is_file() and whole.stat().st_mtime >= path.stat().st_mtime:
        return whole
    partial = path.with_name(".frames-whole.h5.partial")
    with h5py.File(path, "r") as f, h5py.File(partial, "w") as out:
        frames = f["frames"]
        copy = out.create_dataset("frames", frames.shape, frames.dtype, chunks=(1, *frames.shape[1:]), fillvalue=0,
                                  **hdf5plugin.Bitshuffle(cname="lz4"))
        sources = {}
        for mapping in frames.virtual_sources():
            name = mapping.file_name
            index = mapping.vspace.get_select_bounds()[0][0]
            sources.setdefault(name, []).append(index)
        for name, indices in sources.items():
            with h5py.File(path.parent / name, "r") as part:
                for k in indices:
                    _, chunk = part["frames"].id.read_direct_chunk((k, 0, 0))
                    copy.id.write_direct_chunk((k, 0, 0), chunk)
        for name in ("received", *COPIED):
            if name in f:
                f.copy(f[name], out, name)
        for key, value in f.attrs.items():
            if key != "receivers":
                out.attrs[key] = value
    os.replace(partial, whole)
    return whole


class FrameWindows:
    """Windows of a scan's stored frames (``frames.h5`` or one receiver's part), reading what a window needs:
    a frame stored as one Bitshuffle-LZ4 chunk (as the ingest writes it, a DECTRIS bslz4 frame as received)
    decompresses only the blocks of the window's rows, so a window of a 10-Mpixel detector costs its share of
    the detector, not the detector. A virtual ``frames`` is read from the part that holds each frame."""

    def __init__(self, handle: h5py.File):
        self.frames = handle["frames"]
        self.shape, self.dtype = self.frames.shape[1:], self.frames.dtype
        self.parts, self.opened = {}, {}  # frame index → (part file, dataset name); part file → (dataset, direct)
        self.own = (None, False)
        self.virtual = self.frames.is_virtual  # asked once: h5py reads the creation property list each time
        if self.virtual:
            folder = Path(handle.filename).parent
            for mapping in self.frames.virtual_sources():
                index = mapping.vspace.get_select_bounds()[0][0]
                self.parts[index] = (folder / mapping.file_name, mapping.dset_name)
        else:
            self.own = (self.frames, self._direct(self.frames))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for dataset, _ in self.opened.values():
            dataset.file.close()

    def window(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        """Frame ``index``'s rows × cols as stored (zeros where the frame was never written)."""
        index = int(index)
        dataset, direct = self._holder(index)
        if dataset is None:
            return np.zeros((rows.stop - rows.start, cols.stop - cols.start), self.dtype)
        if direct:
            try:
                filtered, chunk = dataset.id.read_direct_chunk((index, *(0,) * len(self.shape)))
            except (KeyError, OSError, RuntimeError, ValueError):  # an unwritten chunk: the fill value
                return np.zeros((rows.stop - rows.start, cols.stop - cols.start), self.dtype)
            if filtered == 0:
                return codecs.Received(chunk, "bslz4", self.shape, self.dtype).rows(rows.start, rows.stop)[:, cols]
        return dataset[index, rows, cols]

    def stack(self, indices, rows: slice, cols: slice) -> np.ndarray:
        """The window of every frame (N, rows, cols): the frames not in ``indices`` are zeros."""
        out = np.zeros((len(self.frames), rows.stop - rows.start, cols.stop - cols.start), self.dtype)
        for k in indices:
            out[k] = self.window(k, rows, cols)
        return out

    def _holder(self, index: int):
        if not self.virtual:
            return self.own
        if index not in self.parts:
            return None, False
        path, name = self.parts[index]
        if path not in self.opened:
            dataset = h5py.File(path, "r")[name]
            self.opened[path] = (dataset, self._direct(dataset))
        return self.opened[path]

    def _direct(self, dataset) -> bool:
        """Whether each frame is one chunk of integer Bitshuffle-LZ4 (HDF5 filter 32008, compression 2, alone):
        then a window's rows decode from the chunk itself."""
        if dataset.chunks != (1, *self.shape) or self.dtype.kind not in "ui":
            return False
        plist = dataset.id.get_create_plist()
        if plist.get_nfilters() != 1:
            return False
        code, _, values, _ = plist.get_filter(0)
        return code == hdf5plugin.BSHUF_ID and len(values) > 4 and values[4] == 2
