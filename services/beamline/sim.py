"""Push scans frame by frame to the ingest, as a beamline control system would.

Sources: simulated crystals (``shared.physics.crystals``) or a recorded scan
(.npz/.npy/.h5 volume, e.g. ../shared/data/aps-34idc-scan54/frames.npz).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cbor2
import numpy as np
import zmq

from shared.wire import codecs
from shared.wire.files import read_intensity
from shared.physics import crystals

GEOMETRY_34IDC = {"energy_kev": 9.0, "distance_m": 0.5, "pixel_m": 55e-6, "rocking_step_deg": 0.005,
                  "delta_deg": 32.174, "gamma_deg": 12.6346, "hkl": [1, 1, 1], "lattice_nm": 0.408}


def simulated_volume(size: int, seed: int, index: int, photons: float) -> np.ndarray:
    """A crystal's noisy rocking curve as uint32 detector counts."""
    intensity = crystals.simulated_scan(size, seed, index, index, True, (photons, photons))[0]
    return np.round(intensity).astype(np.uint32)


def pace(began: float, sent: int, rate_hz: float) -> None:
    """Sleep until ``sent`` frames are due at ``rate_hz`` since ``began`` (0: as fast as possible)."""
    if rate_hz:
        delay = began + sent / rate_hz - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def detector_flaws(volume: np.ndarray, gap_columns=(), dead=(), saturation: float | None = None):
    """Frames as a DECTRIS detector with its pixel mask applied sends them: module-gap columns and dead
    pixels at the dtype's maximum, counts clipped at ``saturation``. Returns (frames, pixel mask)."""
    mask = np.zeros(volume.shape[1:], np.uint32)
    for column in gap_columns:
        mask[:, column] = 1
    for row, column in dead:
        mask[row, column] = 1
    out = volume.copy()
    if saturation is not None:
        out = np.minimum(out, np.asarray(saturation).astype(out.dtype))
    out[:, mask != 0] = np.iinfo(out.dtype).max
    return out, mask


def recorded_volume(path: Path) -> np.ndarray:
    batch, _ = read_intensity(path)
    return batch[0].astype(np.uint32)


class Beamline:
    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", hwm: int = 100000):
        self.context = zmq.Context()  # its own, so close() can wait for delivery without touching others
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        for address in endpoint.split(","):  # several receivers: ZeroMQ deals the messages among them
            self.socket.connect(address.strip())

    def send(self, header: dict, payload: bytes | None = None) -> None:
        parts = [json.dumps(header).encode()] + ([payload] if payload is not None else [])
        self.socket.send_multipart(parts)

    def play(self, scan: str, volume: np.ndarray, rate_hz: float = 0.0, encoding: str = "raw",
             geometry: dict | None = None, order=None, end: bool = True, progress=None,
             pixel_mask: np.ndarray | None = None, saturation: float | None = None, proposal: str | None = None) -> None:
        """Start, frames (in ``order``, default 0..N-1) at ``rate_hz`` (0 = as fast as possible), end;
        a ``pixel_mask`` rides with the start (lz4), as do the detector's ``saturation`` value and the proposal."""
        start = {"type": "start", "scan": scan, "frames": int(volume.shape[0]), "shape": list(volume.shape[1:]),
                 "dtype": str(volume.dtype)}
        if geometry:
            start["geometry"] = geometry
        if proposal:
            start["proposal"] = proposal
        if saturation is not None:
            start["saturation_value"] = float(saturation)
        if pixel_mask is not None:
            mask = np.ascontiguousarray(pixel_mask, "<u4")
            start["pixel_mask"] = {"dtype": "uint32", "encoding": "lz4", "source": "beamline-sim"}
            self.send(start, codecs.encode(mask, "lz4"))
        else:
            self.send(start)
        began = time.perf_counter()
        for k, index in enumerate(range(volume.shape[0]) if order is None else order):
            frame = np.ascontiguousarray(volume[index]).astype(volume.dtype.newbyteorder("<"), copy=False)
            header = {"type": "frame", "scan": scan, "index": int(index)}
            if encoding != "raw":
                header["encoding"] = encoding
            self.send(header, codecs.encode(frame, encoding))
            if progress:
                progress(1)
            pace(began, k + 1, rate_hz)
        if end:
            self.send({"type": "end", "scan": scan})

    def close(self, linger_ms: int = 60000) -> None:
        """Return once queued frames are delivered (up to ``linger_ms``: a missing ingest cannot hang us)."""
        self.socket.close(linger=linger_ms)
        self.context.term()


DECTRIS_ENCODINGS = {"raw": "<", "lz4": "lz4<", "bslz4": "bs32-lz4<"}


def dectris_messages(series, volume: np.ndarray, encoding: str = "bslz4", pixel_mask: np.ndarray | None = None,
                     saturation: float | None = None):
    """The multipart messages of one DECTRIS stream-v1 series (header, images, end); with a pixel mask,
    the header is ``header_detail: all`` and carries it (dpixelmask-1.0, after the flatfield parts)."""
    frames, height, width = volume.shape
    bits = volume.dtype.itemsize * 8
    config = {"nimages": frames, "ntrigger": 1, "x_pixels_in_detector": width, "y_pixels_in_detector": height,
              "bit_depth_image": bits, "pixel_mask_applied": pixel_mask is not None}
    if saturation is not None:
        config["countrate_correction_count_cutoff"] = int(saturation)
    header = [json.dumps({"htype": "dheader-1.0", "series": series,
                          "header_detail": "all" if pixel_mask is not None else "basic"}).encode(),
              json.dumps(config).encode()]
    if pixel_mask is not None:
        flat = np.ones((height, width), "<f4")
        header += [json.dumps({"htype": "dflatfield-1.0", "shape": [width, height], "type": "float32"}).encode(),
                   flat.tobytes(),
                   json.dumps({"htype": "dpixelmask-1.0", "shape": [width, height], "type": "uint32"}).encode(),
                   np.ascontiguousarray(pixel_mask, "<u4").tobytes(),
                   json.dumps({"htype": "dcountrate_table-1.0", "shape": [2, 0], "type": "float32"}).encode(),
                   b""]
    yield header
    wire = DECTRIS_ENCODINGS[encoding].replace("32", str(bits))
    for k, frame in enumerate(volume):
        yield [json.dumps({"htype": "dimage-1.0", "series": series, "frame": k}).encode(),
               json.dumps({"htype": "dimage_d-1.0", "shape": [width, height], "type": str(volume.dtype),
                           "encoding": wire}).encode(),
               codecs.encode(frame, encoding),
               json.dumps({"htype": "dconfig-1.0", "start_time": k, "stop_time": k + 1, "real_time": 1}).encode()]
    yield [json.dumps({"htype": "dseries_end-1.0", "series": series}).encode()]


TYPED_ARRAY_TAGS = {"uint8": 64, "uint16": 69, "uint32": 70}  # RFC 8746, little-endian


def dectris2_messages(series, volume: np.ndarray, encoding: str = "bslz4", geometry: dict | None = None,
                      pixel_mask: np.ndarray | None = None, saturation: float | None = None,
                      proposal: str | None = None):
    """The messages of one DECTRIS stream-v2 series (start, images, end), each one CBOR part; the
    geometry, if any, rides in the start's ``user_data`` (SIMPLON's header_appendix); a pixel mask
    in the start's ``pixel_mask`` (per channel, a tag-40 array, bslz4-compressed with tag 56500)."""
    frames, height, width = volume.shape
    start = {"type": "start", "series_id": series, "series_unique_id": f"sim-{series}", "number_of_images": frames,
             "image_size_x": width, "image_size_y": height, "channels": ["threshold_1"],
             "arm_date": cbor2.CBORTag(0, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
             "pixel_mask_enabled": pixel_mask is not None, "countrate_correction_enabled": saturation is not None,
             "flatfield_enabled": False}
    if saturation is not None:
        start["saturation_value"] = int(saturation)
    if pixel_mask is not None:
        mask = np.ascontiguousarray(pixel_mask, "<u4")
        packed = cbor2.CBORTag(56500, ["bslz4", 4, codecs.encode(mask, "bslz4")])
        start["pixel_mask"] = {"threshold_1": cbor2.CBORTag(40, [[height, width], cbor2.CBORTag(70, packed)])}
    user_data = {**({"geometry": geometry} if geometry else {}), **({"proposal": proposal} if proposal else {})}
    if user_data:
        start["user_data"] = user_data
    yield [cbor2.dumps(start)]
    tag = TYPED_ARRAY_TAGS[str(volume.dtype)]
    for k, frame in enumerate(volume):
        frame = np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<"), copy=False)
        if encoding == "bslz4":
            content = cbor2.CBORTag(56500, ["bslz4", frame.itemsize, codecs.encode(frame, "bslz4")])
        elif encoding == "lz4":
            content = cbor2.CBORTag(56500, ["lz4", 0, codecs.encode_lz4_hdf5(frame)])
        else:
            content = frame.tobytes()
        image = cbor2.CBORTag(40, [[height, width], cbor2.CBORTag(tag, content)])
        yield [cbor2.dumps({"type": "image", "series_id": series, "series_unique_id": f"sim-{series}", "image_id": k,
                           "start_time": [k, 1000], "stop_time": [k + 1, 1000], "real_time": [1000, 1000],
                           "data": {"threshold_1": image}})]
    yield [cbor2.dumps({"type": "end", "series_id": series, "series_unique_id": f"sim-{series}"})]


class DectrisDetector:
    """A simulated DECTRIS detector: binds a PUSH socket that the ingest connects to (--dectris);
    ``version`` 1 (multipart JSON, legacy) or 2 (CBOR, SIMPLON 1.8+)."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:9999", hwm: int = 100000, version: int = 1):
        self.version = version
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.bind(endpoint)

    def play(self, series, volume: np.ndarray, rate_hz: float = 0.0, encoding: str = "bslz4", progress=None,
             geometry: dict | None = None, pixel_mask: np.ndarray | None = None, saturation: float | None = None,
             proposal: str | None = None):
        """One series; stream v1 carries no geometry or proposal, v2 carries them in the start's user_data; both
        carry a pixel mask and the saturation value in their start."""
        began = time.perf_counter()
        messages = dectris2_messages(series, volume, encoding, geometry, pixel_mask, saturation, proposal) \
            if self.version == 2 else dectris_messages(series, volume, encoding, pixel_mask, saturation)
        for k, parts in enumerate(messages):
            self.socket.send_multipart(parts)
            if progress and 0 < k <= volume.shape[0]:
                progress(1)
            if rate_hz and 0 < k <= volume.shape[0]:
                delay = began + k / rate_hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)

    def close(self, linger_ms: int = 60000) -> None:
        self.socket.close(linger=linger_ms)
        self.context.term()


class PvaDetector:
    """A simulated areaDetector with NDPluginPva: a pvAccess server publishing each frame as an NTNDArray
    on ``channel``, with the scan context as NDAttributes (scan, frames, index, geometry) unless
    ``attributes`` is False; ``encoding`` lz4 or bslz4 compresses as areaDetector's codec plugin does."""

    def __init__(self, channel: str = "cdi:sim:image"):
        import pvaccess as pva

        from services.ingest.pva import loopback_defaults

        loopback_defaults()
        self.pva, self.channel = pva, channel
        self.server = pva.PvaServer()
        self.server.addRecord(channel, pva.NtNdArray(), None)
        self.unique = 0

    def ntndarray(self, frame: np.ndarray, encoding: str = "raw", attributes: dict | None = None):
        from pvapy.utility.adImageUtility import AdImageUtility

        pva, self.unique = self.pva, self.unique + 1
        frame = np.ascontiguousarray(frame)
        rows, cols = frame.shape
        if encoding == "raw":
            image = AdImageUtility.generateNtNdArray2D(self.unique, frame)
        else:
            import bitshuffle
            import lz4.block

            packed = lz4.block.compress(frame.tobytes(), store_size=False) if encoding == "lz4" else \
                bitshuffle.compress_lz4(frame, 0).tobytes()  # block size 0, as NDPluginCodec
            image = AdImageUtility.generateNtNdArray2D(self.unique, np.frombuffer(packed, np.uint8), cols, rows,
                                                       frame.dtype, encoding)
        typed = {str: pva.PvString, int: pva.PvInt}
        image["attribute"] = [pva.NtAttribute(name, typed[type(value)](value)) for name, value in (attributes or {}).items()]
        return image

    def play(self, scan: str, volume: np.ndarray, rate_hz: float = 0.0, encoding: str = "raw",
             geometry: dict | None = None, attributes: bool = True, skip=(), progress=None,
             names: dict | None = None) -> None:
        """One scan's frames; ``skip``: indices never published (a dropped frame: its uniqueId is used up)."""
        names = names or {"scan": "scan", "frames": "frames", "index": "index", "geometry": "geometry"}
        began = time.perf_counter()
        for k, frame in enumerate(volume):
            context = {names["scan"]: scan, names["frames"]: int(volume.shape[0]), names["index"]: k}
            if geometry:
                context[names["geometry"]] = json.dumps(geometry)
            image = self.ntndarray(frame, encoding, context if attributes else {})
            if k not in skip:
                self.server.update(self.channel, image)
            if progress:
                progress(1)
            pace(began, k + 1, rate_hz)

    def close(self, linger_s: float = 1.0) -> None:
        """Stop serving, after ``linger_s`` for subscribers to take what is queued."""
        time.sleep(linger_s)
        self.server.stop()
