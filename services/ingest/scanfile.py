"""One scan's raw frames on disk: HDF5 (Bitshuffle-LZ4), written as frames arrive, reopened after a crash.

Layout: ``frames`` (N, H, W) in the detector's dtype, exactly as sent; ``received`` (N,) bool;
``pixel_mask`` (H, W), non-zero = bad pixel, when the scan has one (its ``source`` attribute says
where it came from); ``dark`` and ``flat_field`` (H, W) when configured (DARK_FILE, FLAT_FIELD_FILE); the start message as the ``start`` attribute, its arrival as ``started``, and at the end ``end``
(JSON: state, reason, ended), so a scan's record can be rebuilt from the file alone. ``received`` and HDF5's buffers are pushed to
the OS at every sync, so a killed ingest leaves a file that reopens with what it marked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from services.ingest.assembly import ScanAssembly
from shared.wire import codecs, framefiles
from shared.wire.messages import Start


class ScanFile:
    """A scan being acquired: its in-memory assembly and its HDF5 file."""

    def __init__(self, path: Path, handle: h5py.File, start: Start, assembly: ScanAssembly, record: dict):
        self.path, self.file, self.start, self.assembly = path, handle, start, assembly
        self.dataset = handle["frames"]
        self.windows = framefiles.FrameWindows(handle)  # windows of frames as stored (the ROI's rows decoded)
        self.record = record  # the scan's Redis record, rewritten at every sync
        self.seq = int(record.get("latest_seq", 0))
        self.last_activity = self.opened = time.monotonic()
        self.chunk_tail = (0,) * (self.dataset.ndim - 1)  # a frame's chunk offset after its index (h5py's ndim is slow)
        self.owner = True  # this receiver got the start (always, with one receiver): it keeps the record
        self.others = 0  # frames counted by the other receivers on the stream (``parts``)
        self.previewed_at = 0  # frames in when the last network input was asked for
        self.frames_at_open = 0  # frames already in the file when this ingest opened it (a restart)
        self.part_done = False
        self.others_duplicates = 0
        self.roi_announced = False

    @property
    def frames_in(self) -> int:
        """The scan's frames received, by this receiver and the others sharing its stream."""
        return self.assembly.count + self.others

    @classmethod
    def create(cls, start: Start, folder: Path, record: dict, roi_px: int = 128,
               scratch: Path | None = None, pixel_mask: np.ndarray | None = None,
               mask_source: str | None = None, dark: np.ndarray | None = None,
               flat: np.ndarray | None = None, name: str = "frames.h5", follower: bool = False) -> "ScanFile":
        """``name``: this receiver's file (``frames-<k>.h5`` when several share the stream); a ``follower``
        leaves placing the ROI to the receiver that got the start."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        handle = h5py.File(path, "w")
        handle.create_dataset("frames", (start.frames, *start.shape), start.dtype, chunks=(1, *start.shape),
                              fillvalue=0, **hdf5plugin.Bitshuffle(cname="lz4"))
        handle.create_dataset("received", (start.frames,), bool, fillvalue=False)
        handle.attrs["start"] = start.model_dump_json()
        handle.attrs["started"] = record.get("started", time.time())
        if pixel_mask is not None:
            handle.create_dataset("pixel_mask", data=pixel_mask, compression="gzip")
            handle["pixel_mask"].attrs["source"] = mask_source or "unknown"
        for name, values in (("dark", dark), ("flat_field", flat)):  # as configured when the scan started
            if values is not None:
                handle.create_dataset(name, data=np.asarray(values, np.float32), compression="gzip")
        return cls(path, handle, start, ScanAssembly(start, roi_px, scratch, pixel_mask, dark, flat, follower),
                   {**record, "raw_file": str(path)})

    @classmethod
    def reopen(cls, path: Path, record: dict, roi_px: int = 128, scratch: Path | None = None) -> "ScanFile":
        """Continue a scan whose ingest stopped: the frames it had marked received are kept."""
        handle = h5py.File(path, "r+")
        try:
            start = Start.model_validate_json(handle.attrs["start"])
            mask, dark, flat = (handle[k][()] if k in handle else None for k in ("pixel_mask", "dark", "flat_field"))
            scan = cls(path, handle, start, ScanAssembly(start, roi_px, scratch, mask, dark, flat), record)
            for index in np.flatnonzero(handle["received"][()]):
                scan.assembly.add(int(index), handle["frames"][index])
            scan.previewed_at = scan.assembly.count  # the next preview after the usual number of new frames
            scan.frames_at_open = scan.assembly.count  # the frame rate is timed from the reopening
            scan.place_roi_if_clear()
        except Exception:
            handle.close()
            raise
        return scan

    def add(self, index: int, frame: codecs.Received | np.ndarray) -> bool:
        """Keep a new frame (on disk whole, in memory its ROI); False for a duplicate. CodecError (blocks
        that do not decompress): nothing is kept."""
        frame = codecs.Received.holding(frame)
        if not self.assembly.add(index, frame):
            return False
        self.write(index, frame)
        self.place_roi_if_clear()
        return True

    def read_block(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        """A frame's block as stored: a Bitshuffle-LZ4 chunk decompresses only the blocks of those rows."""
        return self.windows.window(index, rows, cols)

    def place_roi_if_clear(self, now: bool = False) -> None:
        """Place the region of interest once the Bragg peak is clear (or ``now``: a network input is asked)."""
        if not self.assembly.placed and (now or self.assembly.peak_is_clear()):
            self.assembly.place_around_peak(self.read_block)

    def write(self, index: int, frame: codecs.Received) -> None:
        """Store one frame as one ready-compressed chunk (HDF5's bitshuffle-LZ4 chunk layout is the
        DECTRIS bslz4 payload): a bslz4 frame goes to disk as received, with no recompression, and
        any other is compressed once here, bypassing HDF5's slower filter pipeline."""
        chunk = frame.payload if frame.encoding == "bslz4" else codecs.encode(frame.full(), "bslz4")
        self.dataset.id.write_direct_chunk((index, *self.chunk_tail), chunk)

    def sync(self) -> None:
        """Record which frames are in and push HDF5's buffers to the OS."""
        self.file["received"][...] = self.assembly.received
        self.file.flush()

    def close(self, ending: dict | None = None) -> None:
        """Close the file; the ROI volume stays until its network inputs are computed (``assembly.release``).
        ``ending`` (state, reason, ended) is kept in the file: with it a scan's record can be rebuilt from
        DATA_DIR alone (a Redis that restarted empty)."""
        self.sync()
        if ending is not None:
            self.file.attrs["end"] = json.dumps(ending)
        self.file.close()
