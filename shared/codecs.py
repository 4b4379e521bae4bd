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


def decode_lz4_hdf5(payload: bytes) -> bytes:
    """LZ4 in the HDF5 LZ4 filter's framing (DECTRIS stream v2 ``lz4``): 8-byte big-endian total size,
    4-byte block size, then per block a 4-byte compressed size and the block (stored as is when
    compression would not shrink it)."""
    if len(payload) < 12:
        raise CodecError("lz4 (HDF5 framing) payload shorter than its header")
    total, block = struct.unpack(">QI", payload[:12])
    if block == 0 and total:
        raise CodecError("lz4 (HDF5 framing) with a zero block size")
    out, offset = bytearray(), 12
    try:
        while len(out) < total:
            (size,) = struct.unpack(">I", payload[offset:offset + 4])
            want = min(block, total - len(out))
            chunk = payload[offset + 4:offset + 4 + size]
            out += chunk if size == want else lz4.block.decompress(chunk, uncompressed_size=want)
            offset += 4 + size
    except (struct.error, lz4.block.LZ4BlockError):
        raise CodecError("bad lz4 (HDF5 framing) payload") from None
    return bytes(out)


def encode_lz4_hdf5(frame: np.ndarray, block: int = 1 << 20) -> bytes:
    """The inverse of :func:`decode_lz4_hdf5` (a simulated DECTRIS stream v2 detector)."""
    raw = np.ascontiguousarray(frame).tobytes()
    parts = [struct.pack(">QI", len(raw), block)]
    for start in range(0, len(raw), block):
        body = lz4.block.compress(raw[start:start + block], store_size=False)
        body = body if len(body) < len(raw[start:start + block]) else raw[start:start + block]
        parts += [struct.pack(">I", len(body)), body]
    return b"".join(parts)


def to_little_endian(payload: bytes, dtype: str) -> bytes:
    """Big-endian pixels → the native protocol's little-endian bytes."""
    return np.frombuffer(payload, dtype).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
