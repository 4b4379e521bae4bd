"""DECTRIS detector streams (interface v1 and v2) → the native protocol, so one ingest serves all.

The detector binds a ZeroMQ PUSH socket; the ingest connects a PULL socket to it.

Stream v1 (``format: legacy``): multipart JSON + blobs:
    dheader-1.0      series start (+ detector config with nimages, ntrigger, pixel counts, bit depth)
    dimage-1.0       frame k: [dimage-1.0, dimage_d-1.0 (shape, type, encoding), data, dconfig-1.0]
    dseries_end-1.0  series end
    Encodings: '<' (raw), 'lz4<', 'bs16-lz4<'/'bs32-lz4<' (bitshuffle-LZ4 with its 12-byte header).

Stream v2 (``format: cbor``, the SIMPLON 1.8+ default): one CBOR map per message, ``type``
start / image / end. Images are RFC 8746 typed arrays (tag 40 around a typed-array tag),
compressed with DECTRIS tag 56500 (``bslz4`` in the HDF5 filter's framing, which is the
native bslz4 payload and goes to disk unchanged; ``lz4`` in HDF5-LZ4 framing). The first
channel (threshold) is kept. A start's ``user_data`` may carry ``{"geometry": {...}, "proposal": "..."}``
(SIMPLON's ``header_appendix``), as the native start message does.

The version is told (``version=1`` or ``2``) or detected per message: v2 messages are one
part that is not JSON.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import cbor2
import numpy as np

from shared.wire import codecs

ENCODINGS = {"<": "raw", "lz4<": "lz4", "bs8-lz4<": "bslz4", "bs16-lz4<": "bslz4", "bs32-lz4<": "bslz4"}
DTYPES = {8: "uint8", 16: "uint16", 32: "uint32"}

# RFC 8746 typed arrays of the types detectors send: tag → numpy dtype
TYPED_ARRAYS = {64: "uint8", 65: ">u2", 66: ">u4", 67: ">u8", 68: "uint8", 69: "<u2", 70: "<u4", 71: "<u8",
                72: "int8", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
                81: ">f4", 82: ">f8", 85: "<f4", 86: "<f8"}
MULTI_DIM_ROW_MAJOR = 40
DECTRIS_COMPRESSION = 56500


class Compressed(NamedTuple):
    algorithm: str
    elem_size: int
    data: bytes


class TypedArray(NamedTuple):
    dtype: str
    content: bytes | Compressed


class MultiDimArray(NamedTuple):
    shape: tuple
    array: TypedArray


def _tag(*args):
    """Keep the image as tagged bytes (no decompression here: bslz4 goes to disk as received). cbor2 5
    calls this with (decoder, tag), cbor2 6 with (tag, immutable)."""
    tag = next(arg for arg in args if isinstance(arg, cbor2.CBORTag))
    if tag.tag == DECTRIS_COMPRESSION:
        algorithm, elem_size, data = tag.value
        return Compressed(str(algorithm), int(elem_size), bytes(data))
    if tag.tag in TYPED_ARRAYS:
        return TypedArray(TYPED_ARRAYS[tag.tag], tag.value)
    if tag.tag == MULTI_DIM_ROW_MAJOR:
        shape, array = tag.value
        return MultiDimArray(tuple(int(n) for n in shape), array)
    return tag


def is_v2(parts: list[bytes]) -> bool:
    return len(parts) == 1 and parts[0][:1] not in (b"{", b" ", b"\n")


class DectrisTranslator:
    """Turns one DECTRIS message into native messages (each a list of parts); ValueError if malformed."""

    def __init__(self, prefix: str = "series", version: int | None = None, shared: bool = False):
        self.prefix = prefix
        self.version = version  # None: detected per message
        self.shared = shared  # one of several receivers on the stream: its series' starts may reach another
        self.pending: dict[str, dict] = {}  # v2 series started, waiting for their first image (its dtype)
        self.started: dict[str, dict] = {}  # v2 series whose native start has gone out

    def scan_id(self, series) -> str:
        return f"{self.prefix}-{series}"

    def translate(self, parts: list[bytes]) -> list[list[bytes]]:
        v2 = is_v2(parts) if self.version is None else self.version == 2
        return self.translate_v2(parts) if v2 else self.translate_v1(parts)

    # stream v1 --------------------------------------------------------------
    def translate_v1(self, parts: list[bytes]) -> list[list[bytes]]:
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
            start = {"type": "start", "scan": self.scan_id(head["series"]), "frames": frames, "shape": shape,
                     "dtype": dtype}
            if config.get("countrate_correction_count_cutoff"):
                start["saturation_value"] = float(config["countrate_correction_count_cutoff"])
            mask = v1_pixel_mask(parts[2:], shape)  # header_detail "all" carries it
            if mask is None:
                return [native(start)]
            start["pixel_mask"] = {"dtype": "uint32", "encoding": "raw", "source": "DECTRIS stream v1 header"}
            return [native(start, mask.astype("<u4").tobytes())]
        if htype == "dimage-1.0":
            if len(parts) < 3:
                raise ValueError("DECTRIS image without data part")
            detail = json.loads(parts[1])
            encoding = ENCODINGS.get(detail.get("encoding", "<"))
            if encoding is None:
                raise ValueError(f"DECTRIS encoding {detail.get('encoding')!r} not supported")
            payload = parts[2]
            if encoding == "bslz4":  # some senders leave out the HDF5 filter's 12-byte header
                try:
                    nbytes = int(np.prod(detail["shape"])) * np.dtype(detail.get("type", "uint32")).itemsize
                except (KeyError, TypeError, ValueError):
                    raise ValueError("DECTRIS bslz4 image without its shape and type") from None
                payload = codecs.with_bslz4_header(payload, nbytes)
            return [native({"type": "frame", "scan": self.scan_id(head["series"]), "index": int(head["frame"]),
                            "encoding": encoding}, payload)]
        if htype == "dseries_end-1.0":
            return [native({"type": "end", "scan": self.scan_id(head["series"])})]
        raise ValueError(f"DECTRIS htype {htype!r} not expected")

    # stream v2 --------------------------------------------------------------
    def translate_v2(self, parts: list[bytes]) -> list[list[bytes]]:
        if len(parts) != 1:
            raise ValueError("DECTRIS stream v2 message in more than one part")
        try:
            message = cbor2.loads(parts[0], tag_hook=_tag)
            kind, series = message["type"], message["series_id"]
        except (cbor2.CBORDecodeError, ValueError, TypeError, KeyError):
            raise ValueError("DECTRIS stream v2 message that is not a CBOR map with type and series_id") from None
        scan = self.scan_id(series)
        if kind == "start":
            return self.v2_start(scan, message)
        if kind == "image":
            return self.v2_image(scan, message)
        if kind == "end":  # a series without images still starts (and fails as empty)
            out = [self.native_start(scan, self.pending.pop(scan), "uint32")] if scan in self.pending else []
            self.started.pop(scan, None)
            return out + [native({"type": "end", "scan": scan})]
        raise ValueError(f"DECTRIS stream v2 message type {kind!r} not expected")

    def v2_start(self, scan: str, message: dict) -> list[list[bytes]]:
        """The native start waits for the first image: a v2 start does not say the pixel type."""
        try:
            frames = int(message["number_of_images"])
            shape = [int(message["image_size_y"]), int(message["image_size_x"])]
            channels = list(message.get("channels") or [])
        except (KeyError, TypeError, ValueError):
            raise ValueError("DECTRIS stream v2 start without number_of_images and image_size_x/y") from None
        user = message.get("user_data")
        geometry = user.get("geometry") if isinstance(user, dict) else None
        proposal = user.get("proposal") if isinstance(user, dict) else None
        channel = channels[0] if channels else None
        masks = message.get("pixel_mask") if isinstance(message.get("pixel_mask"), dict) else {}
        mask = masks.get(channel, next(iter(masks.values()), None)) if masks else None
        saturation = message.get("saturation_value")
        self.pending[scan] = {"frames": frames, "shape": shape, "channel": channel, "geometry": geometry,
                              "proposal": proposal,
                              "pixel_mask": None if mask is None else v2_array(mask, shape, "pixel mask"),
                              "saturation": float(saturation) if isinstance(saturation, (int, float)) else None}
        return []

    @staticmethod
    def native_start(scan: str, series: dict, dtype: str) -> list[bytes]:
        start = {"type": "start", "scan": scan, "frames": series["frames"], "shape": series["shape"], "dtype": dtype}
        if series["geometry"]:
            start["geometry"] = series["geometry"]
        if series.get("proposal") is not None:
            start["proposal"] = series["proposal"]
        if series.get("saturation"):
            start["saturation_value"] = series["saturation"]
        mask = series.get("pixel_mask")
        if mask is None:
            return native(start)
        start["pixel_mask"] = {"dtype": "uint32", "encoding": "raw",
                               "source": f"DECTRIS stream v2 start ({series['channel'] or 'first channel'})"}
        return native(start, mask.astype("<u4").tobytes())

    def v2_image(self, scan: str, message: dict) -> list[list[bytes]]:
        series = self.pending.get(scan) or self.started.get(scan)
        if series is None and not self.shared:
            raise ValueError("DECTRIS stream v2 image of a series that did not start")
        data = message.get("data")
        if not isinstance(data, dict) or not data:
            raise ValueError("DECTRIS stream v2 image without data")
        # a series started at another receiver (``shared``): the image carries its own type and shape, and the
        # ingest checks it against the start that receiver announces
        image = data.get(series["channel"], next(iter(data.values()))) if series else next(iter(data.values()))
        if not isinstance(image, MultiDimArray) or not isinstance(image.array, TypedArray):
            raise ValueError("DECTRIS stream v2 image that is not a typed multi-dimensional array")
        if series and list(image.shape) != series["shape"]:
            raise ValueError("DECTRIS stream v2 image of another size than its start message says")
        encoding, payload, dtype = unpack(image.array)
        try:
            index = int(message["image_id"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("DECTRIS stream v2 image without image_id") from None
        out = []
        if scan in self.pending:  # the first image: now the start can say the pixel type
            self.started[scan] = self.pending.pop(scan)
            out.append(self.native_start(scan, self.started[scan], np.dtype(dtype).name))
        return out + [native({"type": "frame", "scan": scan, "index": index, "encoding": encoding}, payload)]


def v1_pixel_mask(parts: list[bytes], shape: list[int]) -> np.ndarray | None:
    """The ``dpixelmask-1.0`` header part and the data part after it, among a v1 header's detail parts."""
    for k in range(len(parts) - 1):
        try:
            head = json.loads(parts[k])
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(head, dict) and head.get("htype") == "dpixelmask-1.0":
            dtype = np.dtype(head.get("type", "uint32")).newbyteorder("<")
            try:
                return np.frombuffer(parts[k + 1], dtype).reshape(shape)
            except ValueError:
                raise ValueError("DECTRIS pixel mask of another size than the detector") from None
    return None


def unpack(array: TypedArray) -> tuple[str, bytes, str]:
    """(native encoding, little-endian payload, dtype) of a v2 typed array: bslz4 kept compressed (it goes to
    disk as received), lz4 decompressed; ValueError for any other compression."""
    dtype, content = array
    encoding, payload = "raw", content
    if isinstance(content, Compressed):
        if content.algorithm == "bslz4":
            encoding, payload = "bslz4", content.data
        elif content.algorithm == "lz4":
            try:
                payload = codecs.decode_lz4_hdf5(content.data)
            except codecs.CodecError as exc:
                raise ValueError(str(exc)) from None
        else:
            raise ValueError(f"DECTRIS compression {content.algorithm!r} not supported")
    if dtype.startswith(">"):  # the native protocol is little-endian
        payload, dtype = codecs.to_little_endian(payload, dtype), "<" + dtype[1:]
    return encoding, payload, dtype


def v2_array(value, shape: list[int], what: str) -> np.ndarray:
    """A v2 tag-40 typed array (possibly DECTRIS-compressed) as a numpy array of ``shape``."""
    if not isinstance(value, MultiDimArray) or not isinstance(value.array, TypedArray) or list(value.shape) != shape:
        raise ValueError(f"DECTRIS stream v2 {what} that is not a typed array of the detector's size")
    encoding, payload, dtype = unpack(value.array)
    try:
        return np.array(codecs.decode(payload, encoding, shape, dtype))
    except codecs.CodecError as exc:
        raise ValueError(f"DECTRIS stream v2 {what}: {exc}") from None


def native(header: dict, payload: bytes | None = None) -> list[bytes]:
    return [json.dumps(header).encode()] + ([payload] if payload is not None else [])
