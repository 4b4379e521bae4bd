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


_SIZE = struct.Struct(">I")
BITSHUFFLE_BLOCK_BYTES = 8192  # bitshuffle's default block (block size 0), as areaDetector's codec and simulators use


def with_bslz4_header(payload: bytes, nbytes: int) -> bytes:
    """A bitshuffle-LZ4 payload in the HDF5 filter's layout (12-byte header: uncompressed size, block size),
    the layout stored and decoded here: bare bitshuffle output (areaDetector's NDPluginCodec, ALBA's
    eiger-simulator) gets the header of bitshuffle's default block in front; one that has it is kept."""
    if len(payload) >= 12 and struct.unpack_from(">Q", payload)[0] == nbytes:
        return payload
    return struct.pack(">QI", nbytes, BITSHUFFLE_BLOCK_BYTES) + payload


def bslz4_blocks(payload: bytes, shape, dtype) -> tuple[int, list[int]]:
    """(elements per block, offset of each full block's size field, then the end of the full blocks) of a
    bslz4 payload. Checks its framing against ``shape`` and ``dtype`` without decompressing anything:
    a truncated or garbled payload raises CodecError here."""
    dtype = np.dtype(dtype)
    if len(payload) < 12:
        raise CodecError("bslz4 payload shorter than its header")
    size, block_bytes = struct.unpack_from(">QI", payload)
    elements = int(np.prod(shape))
    if size != elements * dtype.itemsize or not block_bytes or block_bytes % dtype.itemsize:
        raise CodecError("bslz4 header does not match shape and dtype")
    block = block_bytes // dtype.itemsize
    offsets, position, unpack = [], 12, _SIZE.unpack_from
    try:
        for _ in range(elements // block):
            offsets.append(position)
            position += 4 + unpack(payload, position)[0]
        offsets.append(position)
        rest = elements % block
        if rest - rest % 8:
            position += 4 + unpack(payload, position)[0]
    except struct.error:
        raise CodecError("bad bslz4 payload") from None
    if position + (rest % 8) * dtype.itemsize != len(payload):
        raise CodecError("bad bslz4 payload")
    return block, offsets


def bslz4_rows(payload: bytes, shape, dtype, first: int, last: int, blocks: tuple[int, list[int]]) -> np.ndarray:
    """Rows ``first:last`` of a bslz4 frame, decompressing only the blocks that hold them (``blocks``: from
    :func:`bslz4_blocks`): a region of interest costs its share of the detector, not the detector."""
    dtype = np.dtype(dtype).newbyteorder("<")
    block, offsets = blocks
    width = int(shape[1])
    begin, end = first * width, last * width
    b0, b1 = begin // block, -(-end // block)
    if b1 > len(offsets) - 1:  # the rows reach the last, partial block: decode all
        return decode(payload, "bslz4", shape, dtype)[first:last]
    data = np.frombuffer(payload, np.uint8, count=offsets[b1] - offsets[b0], offset=offsets[b0])
    try:
        values = bitshuffle.decompress_lz4(data, ((b1 - b0) * block,), dtype, block)
    except Exception:
        raise CodecError("bad bslz4 payload") from None
    return values[begin - b0 * block:end - b0 * block].reshape(last - first, width)


class Received:
    """A frame as received, decoded only as far as it is read: an integer bslz4 frame's framing is checked
    on arrival, and :meth:`rows` decompresses only the blocks holding the rows asked (the ROI), so the
    receive path of a 10-Mpixel detector does not pay for the detector. Other frames decode at once."""

    def __init__(self, payload: bytes, encoding: str, shape, dtype):
        self.payload, self.encoding, self.shape = payload, encoding, tuple(shape)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.blocks = None
        self.array = None
        if encoding == "bslz4" and self.dtype.kind in "ui":
            self.blocks = bslz4_blocks(payload, shape, self.dtype)
        else:
            self.array = decode(payload, encoding, shape, self.dtype)

    @classmethod
    def holding(cls, frame) -> "Received":
        """``frame`` itself if it is one, else a decoded array (a frame read back from a file) as one."""
        if isinstance(frame, cls):
            return frame
        out = cls.__new__(cls)
        out.array = np.asarray(frame)
        out.payload, out.encoding, out.shape, out.dtype, out.blocks = None, "raw", out.array.shape, out.array.dtype, None
        return out

    def full(self) -> np.ndarray:
        if self.array is None:
            self.array = decode(self.payload, self.encoding, self.shape, self.dtype)
        return self.array

    def rows(self, first: int, last: int) -> np.ndarray:
        if self.array is not None:
            return self.array[first:last]
        return bslz4_rows(self.payload, self.shape, self.dtype, first, last, self.blocks)


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
