"""Frames of one scan → its 3D rocking curve and the network input (no I/O)."""

from __future__ import annotations

import numpy as np

from shared.messages import Start
from shared.physics import downsample


class ScanAssembly:
    """In-memory rocking curve of a scan being acquired; counts duplicates and gaps."""

    def __init__(self, start: Start):
        self.start = start
        self.frames = np.zeros((start.frames, *start.shape), np.float32)
        self.received = np.zeros(start.frames, bool)
        self.duplicates = 0
        self.out_of_order = 0
        self.last_index = -1
        self.crop, self.crop_count = None, 0  # the previews' crop and the frame count it was chosen at

    def add(self, index: int, frame: np.ndarray) -> bool:
        """Place a frame; False (and counted) if that index arrived before."""
        if self.received[index]:
            self.duplicates += 1
            return False
        if index < self.last_index:
            self.out_of_order += 1
        self.last_index = max(self.last_index, index)
        self.frames[index] = frame
        self.received[index] = True
        return True

    @property
    def count(self) -> int:
        return int(self.received.sum())

    @property
    def missing(self) -> int:
        return int(self.start.frames - self.received.sum())

    def network_input(self, reuse_crop: bool = False) -> tuple[np.ndarray, tuple]:
        """(32³ magnitude, crop shape): centred on the middle of the rocking curve and the
        detector centre of mass, so frames not yet acquired stay zero at the end.

        Choosing the crop takes a 3D FFT of the whole volume (its oversampling), the
        dominant cost for large frames; previews (``reuse_crop``) choose it again only
        when the frame count has doubled since, the final input always afresh."""
        volume = self.frames
        n = volume.shape[0]
        detector = volume.sum(axis=0)
        centre = (n // 2, *downsample.bragg_peak(np.broadcast_to(detector, (1, *detector.shape)))[1:])
        if min(volume.shape) < downsample.NETWORK_SIZE:
            pad = [(0, max(0, downsample.NETWORK_SIZE - s)) for s in volume.shape]
            volume = np.pad(volume, pad)
        if reuse_crop and self.crop is not None and self.count < 2 * self.crop_count:
            crop = self.crop
        else:
            crop = self.crop = downsample.crop_shape(volume, centre)
            self.crop_count = self.count
        return downsample.network_input(volume, centre=centre, crop=crop), crop
