"""DECTRIS detector stream (interface v1) → the native protocol, so one ingest serves both.

Stream v1 is multipart JSON + blobs on a ZeroMQ PUSH socket that the detector
binds; the ingest connects a PULL socket to it:
    dheader-1.0      series start (+ detector config with nimages, ntrigger, pixel counts, bit depth)
    dimage-1.0       frame k: [dimage-1.0, dimage_d-1.0 (shape, type, encoding), data, dconfig-1.0]
    dseries_end-1.0  series end
Encodings: '<' (raw), 'lz4<', 'bs16-lz4<'/'bs32-lz4<' (bitshuffle-LZ4 with its 12-byte header).
"""

from __future__ import annotations

import json

ENCODINGS = {"<": "raw", "lz4<": "lz4", "bs8-lz4<": "bslz4", "bs16-lz4<": "bslz4", "bs32-lz4<": "bslz4"}
DTYPES = {8: "uint8", 16: "uint16", 32: "uint32"}


class DectrisTranslator:
    """Turns one DECTRIS multipart message into native message parts (or a reason to reject)."""

    def __init__(self, prefix: str = "series"):
        self.prefix = prefix
        self.series_shape: dict[str, tuple] = {}

    def scan_id(self, series) -> str:
        return f"{self.prefix}-{series}"

    def translate(self, parts: list[bytes]) -> list[bytes] | None:
        """Native parts, or None for messages that carry nothing for us; ValueError if malformed."""
        try:
            head = json.loads(parts[0])
            htype = head["htype"]
        except (ValueError, KeyError, TypeError, IndexError):
            raise ValueError("DECTRIS message without a JSON htype header") from None
        if htype == "dheader-1.0":
            if head.get("header_detail", "basic") == "none" or len(parts) < 2:
                raise ValueError("DECTRIS header without detector config (set header_detail to basic or all)")
            config = json.loads(parts[1])
            frames = int(config.get("nimages", 1)) * int(config.get("ntrigger", 1))
            shape = [int(config["y_pixels_in_detector"]), int(config["x_pixels_in_detector"])]
            dtype = DTYPES.get(int(config.get("bit_depth_image", 32)), "uint32")
            self.series_shape[str(head["series"])] = shape
            native = {"type": "start", "scan": self.scan_id(head["series"]), "frames": frames, "shape": shape,
                      "dtype": dtype}
            return [json.dumps(native).encode()]
        if htype == "dimage-1.0":
            if len(parts) < 3:
                raise ValueError("DECTRIS image without data part")
            detail = json.loads(parts[1])
            encoding = ENCODINGS.get(detail.get("encoding", "<"))
            if encoding is None:
                raise ValueError(f"DECTRIS encoding {detail.get('encoding')!r} not supported")
            native = {"type": "frame", "scan": self.scan_id(head["series"]), "index": int(head["frame"]),
                      "encoding": encoding}
            return [json.dumps(native).encode(), parts[2]]
        if htype == "dseries_end-1.0":
            return [json.dumps({"type": "end", "scan": self.scan_id(head["series"])}).encode()]
        raise ValueError(f"DECTRIS htype {htype!r} not expected")
