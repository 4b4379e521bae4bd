"""Frames of one scan → its rocking curve in a region of interest → the network input.

Memory per open scan is bounded by the region of interest (ROI), not by frames ×
full detector: the receive path keeps only each frame's ROI, in a memory-mapped
file that the assembler process reads (no copy through a pipe, no GIL shared).
Until the Bragg peak is clear, frames are only summed (one detector image) and
kept on disk; once it is, the ROI is placed around it and filled from the file.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from shared.wire import codecs, detector
from shared.wire.messages import Start
from shared.physics import downsample

ROI_PEAK_CONTRAST = 10.0  # the summed detector's brightest pixel, in units of its mean, that makes a peak clear
ROI_PEAK_MIN_COUNTS = 50.0
SUM_EVERY = 4  # compressed frames summed to find the peak before the ROI is placed: one in this many


def scratch_dir(fallback: Path) -> Path:
    """Where ROI volumes live: shared memory if the system has it, else beside the data."""
    shm = Path("/dev/shm")
    folder = shm if shm.is_dir() and os.access(shm, os.W_OK) else fallback / ".assembly"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove_stale(folder: Path) -> None:
    """ROI volumes and hand-over rings left by an ingest that died (its pid is gone)."""
    for path in [*folder.glob("cdi-live-roi-*.f32"), *folder.glob("cdi-live-ring-*")]:
        try:
            pid = int(path.name.split("-")[3])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError):
            continue


class ScanAssembly:
    """The rocking curve of a scan being acquired, in its ROI; counts duplicates and gaps.

    Pixels that are not counts (``shared.wire.detector``) are not finite in the ROI volume: +inf where
    saturated, NaN where flagged (the dtype's maximum) or masked, so the assembler inpaints them and
    can tell a saturated peak from a peak on a gap; they are zero in the summed detector image."""

    def __init__(self, start: Start, roi_px: int = 128, scratch: Path | None = None,
                 pixel_mask: np.ndarray | None = None, dark: np.ndarray | None = None, flat: np.ndarray | None = None,
                 follower: bool = False):
        self.start = start
        self.follower = follower  # another receiver places the ROI (``parts``): frames are not summed here
        if flat is not None:  # a pixel of zero gain holds nothing
            pixel_mask = (flat == 0) if pixel_mask is None else (pixel_mask != 0) | (flat == 0)
        self.pixel_mask = None if pixel_mask is None or not pixel_mask.any() else pixel_mask != 0
        self.dark, self.flat = dark, flat
        self.flag = detector.flag_value(start.dtype)
        self.limit = min(v for v in (self.flag, start.saturation_value, np.inf) if v is not None)
        self.saturation = start.saturation_value
        self.saturated = 0  # saturated pixel readings in the ROI (or whole frames summed before it is placed)
        self.compressed_seen = 0
        self.received = np.zeros(start.frames, bool)
        self.duplicates = 0
        self.out_of_order = 0
        self.last_index = -1
        self.crop, self.crop_count = None, 0  # the previews' crop and the frame count it was chosen at
        height, width = start.shape
        self.roi_px = (min(height, roi_px or height), min(width, roi_px or width))
        self.scratch = scratch or scratch_dir(Path("."))
        self.path: Path | None = None
        self.volume: np.ndarray | None = None
        self.roi: tuple[int, int] | None = None  # the ROI's first row and column
        self.detector = np.zeros(start.shape, np.float64)  # summed frames, until the ROI is placed
        if self.roi_px == (height, width):
            self.place((0, 0))

    # receiving -----------------------------------------------------------
    def add(self, index: int, frame: np.ndarray | codecs.Received) -> bool:
        """Place a frame (an array, or as received: only its ROI rows are decoded once the ROI is placed,
        and before that a compressed frame is summed one in ``SUM_EVERY``); False (and counted) if that
        index arrived before. What is read is decoded before anything is marked: a frame whose blocks do
        not decompress (CodecError) leaves no trace."""
        if self.received[index]:
            self.duplicates += 1
            return False
        frame = codecs.Received.holding(frame)
        compressed = frame.array is None
        block = summed = None
        if self.volume is not None:
            r, c = self.roi
            block = frame.rows(r, r + self.roi_px[0])[:, c:c + self.roi_px[1]]
        elif not self.follower and not (compressed and self.compressed_seen % SUM_EVERY):
            summed = frame.full()  # a compressed frame: the peak shows in a sample of them
        if compressed and self.volume is None and not self.follower:
            self.compressed_seen += 1
        if index < self.last_index:
            self.out_of_order += 1
        self.last_index = max(self.last_index, index)
        self.received[index] = True
        if block is not None:
            self.volume[index] = self.counts(block, self.roi)
        elif summed is not None:
            self.sum(summed)
        return True

    def sum(self, frame: np.ndarray) -> None:
        """Into the summed detector image: as integers, invalid pixels zeroed only where there are any (the
        receive path is hot)."""
        bad = frame >= self.limit if np.isfinite(self.limit) else None
        if bad is not None and bad.any():
            if self.saturation is not None:
                self.saturated += int(np.count_nonzero(bad & (frame < self.flag) if self.flag else bad))
            frame = np.where(bad, 0, frame)
        if self.pixel_mask is not None:
            frame = np.where(self.pixel_mask, 0, frame)
        np.add(self.detector, frame, out=self.detector, casting="unsafe")

    def counts(self, block: np.ndarray, corner: tuple[int, int]) -> np.ndarray:
        """A frame's block as float32 counts, NaN where a pixel holds none (flagged, saturated, masked)."""
        out = block.astype(np.float32)
        bad = block >= self.limit if np.isfinite(self.limit) else None
        if bad is not None and bad.any():
            flagged = block >= self.flag if self.flag is not None else np.zeros(block.shape, bool)
            if self.saturation is not None:
                saturated = bad & ~flagged
                self.saturated += int(np.count_nonzero(saturated))
                out[saturated] = np.inf
            out[flagged] = np.nan
        window = (slice(corner[0], corner[0] + block.shape[0]), slice(corner[1], corner[1] + block.shape[1]))
        if self.dark is not None or self.flat is not None:  # NaN (flagged) and inf (saturated) stay what they are
            out = detector.corrected(out, None if self.dark is None else self.dark[window],
                                     None if self.flat is None else self.flat[window])
        if self.pixel_mask is not None:
            out[self.pixel_mask[window]] = np.nan
        return out

    @property
    def placed(self) -> bool:
        return self.volume is not None

    def peak_is_clear(self) -> bool:
        """True once the summed frames show a Bragg peak well above their mean (or a quarter of the scan is in)."""
        if self.placed or self.follower or self.count % 4:  # looked at every 4th frame: a cheap receive path
            return False
        top = self.detector.max()
        return (top >= ROI_PEAK_MIN_COUNTS and top >= ROI_PEAK_CONTRAST * self.detector.mean()) or \
            self.count >= max(1, self.start.frames // 4)

    def place_around_peak(self, read: Callable[[int, slice, slice], np.ndarray]) -> None:
        """Put the ROI around the summed frames' peak and fill it with the frames so far (``read`` from disk)."""
        if self.detector.sum() > 0:
            peak = downsample.bragg_peak(self.detector[None])[1:]
        else:
            peak = (self.start.shape[0] // 2, self.start.shape[1] // 2)
        corner = tuple(int(np.clip(p - s // 2, 0, n - s)) for p, s, n in zip(peak, self.roi_px, self.start.shape))
        self.place(corner)
        rows, cols = slice(corner[0], corner[0] + self.roi_px[0]), slice(corner[1], corner[1] + self.roi_px[1])
        for index in np.flatnonzero(self.received):
            self.volume[index] = self.counts(read(int(index), rows, cols), corner)

    def place(self, corner: tuple[int, int]) -> None:
        self.roi = corner
        self.path = self.scratch / f"cdi-live-roi-{os.getpid()}-{uuid.uuid4().hex[:12]}.f32"
        self.volume = np.memmap(self.path, np.float32, "w+", shape=(self.start.frames, *self.roi_px))
        self.detector = None

    def join(self, path: str, corner: tuple[int, int], read: Callable[[int, slice, slice], np.ndarray]) -> None:
        """Write into another receiver's ROI volume (``path``, placed at ``corner``): this receiver's frames so
        far from its file (``read``), then each as it comes. The volume is the owner's to free."""
        self.roi, self.path = tuple(corner), None
        self.volume = np.memmap(path, np.float32, "r+", shape=(self.start.frames, *self.roi_px))
        self.detector = None
        rows, cols = slice(corner[0], corner[0] + self.roi_px[0]), slice(corner[1], corner[1] + self.roi_px[1])
        for index in np.flatnonzero(self.received):
            self.volume[index] = self.counts(read(int(index), rows, cols), self.roi)

    def release(self) -> None:
        """Free the ROI volume (its assembler jobs are done or were never asked)."""
        self.volume = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    @property
    def count(self) -> int:
        return int(self.received.sum())

    @property
    def missing(self) -> int:
        return int(self.start.frames - self.received.sum())

    # computing (in the assembler) ------------------------------------------
    def input_request(self, final: bool) -> tuple[str, tuple, tuple | None, bool]:
        """What the assembler needs: the ROI volume's file, its shape, the crop to reuse (previews
        choose it again only when the frame count has doubled since; the final input always afresh),
        and whether to look for peak warnings (the final input)."""
        self.volume.flush()
        reuse = not final and self.crop is not None and self.count < 2 * self.crop_count
        return str(self.path), self.volume.shape, self.crop if reuse else None, final

    def input_done(self, crop: tuple, frames_used: int) -> None:
        if crop != self.crop:
            self.crop, self.crop_count = crop, frames_used


def network_input(path: str, shape: tuple, crop: tuple | None = None, flags: bool = False):
    """(32³ magnitude, crop shape) of a (possibly partial) ROI volume: centred on the middle of the
    rocking curve and the ROI's centre of mass, so frames not yet acquired stay zero at the end.
    Runs in the assembler process; the oversampling is measured on at most 128³ around the peak.
    With ``flags``, also the operator warnings of ``detector.peak_flags`` (for a final input)."""
    volume = np.memmap(path, np.float32, "r", shape=tuple(shape))
    out = network_input_of(volume, crop)
    return (*out, peak_warnings(volume)) if flags else out


def peak_warnings(volume: np.ndarray) -> list[str]:
    """"peak on a gap" / "saturated peak" when the Bragg peak's neighbourhood in the ROI is invalid."""
    bad = ~np.isfinite(volume)
    if not bad.any():
        return []
    peak = downsample.bragg_peak(detector.inpaint(volume, bad))
    return detector.peak_flags(np.isnan(volume), np.isposinf(volume), peak)


def started() -> None:
    """The assembler process's start: it dies with its ingest, even one killed outright (its pool's pipes, whose
    both ends it holds, would keep it waiting for ever), and Ctrl-C is the ingest's to handle. One thread for
    its BLAS and OpenMP: their spare threads wait spinning, on the cores the receiving and storing processes need
    (with two OpenBLAS threads the day workload took 1,080–1,117 µs of CPU a frame against 860–917)."""
    from threadpoolctl import threadpool_limits

    from services.ingest.receive import die_with_parent

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threadpool_limits(1)


def warm_up() -> None:
    """The assembler's imports and first transforms, paid when the ingest starts rather than by its first
    scan's final input (about a second of CPU on this machine)."""
    volume = np.random.default_rng(0).poisson(1.0, (48, 64, 64)).astype(np.float32)
    network_input_of(volume)


def network_input_of(volume: np.ndarray, crop: tuple | None = None) -> tuple[np.ndarray, tuple]:
    bad = ~np.isfinite(volume)
    if bad.any():  # flagged, saturated or masked pixels: filled from their neighbours, never read as counts
        volume = detector.inpaint(volume, bad)
    n = volume.shape[0]
    summed = volume.sum(axis=0)
    centre = (n // 2, *downsample.bragg_peak(summed[None])[1:])
    if min(volume.shape) < downsample.NETWORK_SIZE:
        volume = np.pad(volume, [(0, max(0, downsample.NETWORK_SIZE - s)) for s in volume.shape])
    crop = crop or downsample.crop_shape(volume, centre)
    return downsample.network_input(volume, centre=centre, crop=crop), crop
