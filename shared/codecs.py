"""Frame compression used on the wire: LZ4 and bitshuffle-LZ4 ("bslz4", the DECTRIS/HDF5 layout).

bslz4 payload = 8-byte big-endian uncompressed size + 4-byte big-endian block
size in bytes + the bitshuffle-LZ4 blocks, as DECTRIS detectors send it.
"""

from __future__ import annotations

import struct

import bitshuffle
import lz4.block
import numpy as np

BLOCK_ELEMENTS = 2048  # bitshuffle's usual 8 KiB blocks for 4-byte pixels


class CodecError(ValueError):
    """A payload that does not decode to the declared frame."""


def encode(frame: np.ndarray, encoding: str) -> bytes:
    raw = np.ascontiguousarray(frame)
    if encoding == "raw":
        return raw.tobytes()
    if encoding == "lz4":
        return lz4.block.compress(raw.tobytes(), store_size=False)
    if encoding == "bslz4":
        body = bitshuffle.compress_lz4(raw, BLOCK_ELEMENTS).tobytes()
        return struct.pack(">QI", raw.nbytes, BLOCK_ELEMENTS * raw.itemsize) + body
    raise CodecError(f"unknown encoding {encoding!r}")


def decode(payload: bytes, encoding: str, shape, dtype) -> np.ndarray:
    """Payload → array of ``shape`` and little-endian ``dtype``; CodecError if it does not fit."""
    dtype = np.dtype(dtype).newbyteorder("<")
    expected = int(np.prod(shape)) * dtype.itemsize
    if encoding == "lz4":
        try:
            payload = lz4.block.decompress(payload, uncompressed_size=expected)
        except Exception:
            raise CodecError("bad lz4 payload") from None
    elif encoding == "bslz4":
        if len(payload) < 12:
            raise CodecError("bslz4 payload shorter than its header")
        size, block_bytes = struct.unpack(">QI", payload[:12])
        if size != expected or block_bytes % dtype.itemsize:
            raise CodecError("bslz4 header does not match shape and dtype")
        try:
            return bitshuffle.decompress_lz4(np.frombuffer(payload[12:], np.uint8), tuple(shape), dtype,
                                             block_bytes // dtype.itemsize)
        except Exception:
            raise CodecError("bad bslz4 payload") from None
    elif encoding != "raw":
        raise CodecError(f"unknown encoding {encoding!r}")
    if len(payload) != expected:
        raise CodecError("payload size does not match shape and dtype")
    return np.frombuffer(payload, dtype).reshape(shape)
