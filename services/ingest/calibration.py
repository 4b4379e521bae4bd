"""The detector's calibration for a scan: its pixel mask, dark frame and flat field, from settings' files.

Each file is read once per ingest and used where its shape is the scan's frames'; a broken file is said
once and scans go without it (it must not stop acquisition). The start message's own pixel mask, where it
sends one, wins over the file.
"""

from __future__ import annotations

import logging

import numpy as np

from services.ingest.rejected import Rejected
from shared.state.settings import Settings
from shared.wire import detector
from shared.wire.files import read_array
from shared.wire.messages import Start

log = logging.getLogger("cdi-live.ingest")


class DetectorFiles:
    """PIXEL_MASK_FILE, DARK_FILE, FLAT_FIELD_FILE and WHITEFIELD_FILE, read once."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.read: dict = {}  # path (or a derived key) → array, None where unreadable

    def array(self, path, shape) -> np.ndarray | None:
        """A per-detector array from settings, used where its shape is the frames'."""
        if path is None:
            return None
        if path not in self.read:
            try:
                self.read[path] = read_array(path)
            except Exception as exc:  # a broken settings file must not stop scans: said once, not used
                log.error("%s unreadable (%s); scans go without it", path, exc)
                self.read[path] = None
        values = self.read[path]
        return values if values is not None and values.shape == tuple(shape) else None

    def dark(self, shape) -> np.ndarray | None:
        return self.array(self.settings.dark_file, shape)

    def flat_field(self, shape) -> tuple[np.ndarray | None, str | None]:
        """(the flat field for frames of ``shape``, the file it came from): FLAT_FIELD_FILE's, else the one of
        WHITEFIELD_FILE (``detector.flat_from_whitefield``); (None, None) where neither fits the frames."""
        flat = self.array(self.settings.flat_field_file, shape)
        if flat is not None:
            return flat, str(self.settings.flat_field_file)
        white = self.array(self.settings.whitefield_file, shape)
        if white is None:
            return None, None
        key = ("whitefield", self.settings.whitefield_file)
        if key not in self.read:
            self.read[key] = detector.flat_from_whitefield(white)
        return self.read[key], f"{self.settings.whitefield_file} (whitefield)"

    def pixel_mask(self, start: Start, mask_part: bytes | None) -> tuple[np.ndarray | None, str]:
        """The scan's pixel mask: the start message's own (``mask_part``), else the detector's file in settings
        (PIXEL_MASK_FILE, used where its shape is the frames'); flags at the dtype's maximum in any case."""
        if start.pixel_mask is not None:
            try:
                return start.mask_array(mask_part), start.pixel_mask.source
            except ValueError as exc:
                raise Rejected(str(exc)) from None
        mask = self.array(self.settings.pixel_mask_file, start.shape)
        if mask is not None:
            return mask, f"settings: {self.settings.pixel_mask_file}"
        return None, "dtype maximum only"
