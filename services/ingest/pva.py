"""EPICS pvAccess (areaDetector NDPluginPva, NTNDArray) → the native protocol, so one ingest serves all.

Each update of the channel is one detector frame. Scan context comes from the frame's NDAttributes
(areaDetector puts any PV there through its attributes XML: the scan record's point, the rocking
motor's readback):

    scan      str, the scan id          frames    int, frames in the scan
    index     int, 0-based              geometry  str (optional), JSON of the start's geometry fields
    proposal  str (optional), the experiment's proposal (else DEFAULT_PROPOSAL)

renamed per beamline with ``attributes``. Without them, ``frames_per_scan`` cuts consecutive frames
into scans of N (ids ``<prefix>-<n>``), indexed by ``uniqueId`` (a frame the server dropped stays
missing: never shifted), with the geometry given once. A scan ends when its last index arrives, a
frame of another scan arrives, or nothing came for ``idle_s``. Gaps in ``uniqueId`` are frames lost
on the way (counted, with the monitor's overruns). Compressed frames: bslz4 goes to disk as received
(the HDF5 filter's 12-byte header is put in front), lz4 is the native lz4; other codecs are rejected.

Monitors ask the server for a queue (``record[queueSize=N]``): without one, updates are merged and
frames lost. pvAccess reconnects by itself after a server restart; the monitor resumes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from shared.wire import codecs

log = logging.getLogger("cdi-live.pva")

DEFAULT_ATTRIBUTES = {"scan": "scan", "frames": "frames", "index": "index", "geometry": "geometry",
                      "proposal": "proposal"}
UNION_DTYPES = {"ubyteValue": "uint8", "ushortValue": "uint16", "uintValue": "uint32", "intValue": "int32",
                "floatValue": "float32", "byteValue": "int8", "shortValue": "int16"}
CODEC_DTYPES = {1: "int8", 5: "uint8", 2: "int16", 6: "uint16", 3: "int32", 7: "uint32", 9: "float32"}  # pvData ScalarType
NATIVE_DTYPES = ("uint8", "uint16", "uint32", "int32", "float32")


class Rejected(ValueError):
    """An update that is not a usable frame; its text is the counted reason."""


def parse_attribute_map(text: str | None) -> dict[str, str]:
    """'scan=SCAN_ID,frames=NPTS' → the default names with those replaced; ValueError on a bad item."""
    names = dict(DEFAULT_ATTRIBUTES)
    for item in filter(None, (text or "").replace(" ", "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULT_ATTRIBUTES or not value:
            raise ValueError(f"--pva-attributes: {item!r} is not one of {', '.join(DEFAULT_ATTRIBUTES)}=NAME")
        names[key] = value
    return names


def attributes_of(update: dict) -> dict:
    """NDAttributes as {name: value} (pvapy gives each value as ({'value': x}, {...type}))."""
    out = {}
    for attribute in update.get("attribute") or []:
        value = attribute.get("value")
        if isinstance(value, tuple) and value and isinstance(value[0], dict):
            value = value[0].get("value")
        elif isinstance(value, dict):
            value = value.get("value")
        out[attribute.get("name")] = value
    return out


def frame_of(update: dict, selected: str | None) -> tuple[bytes, str, str, tuple[int, int]]:
    """(payload, native encoding, dtype, (rows, columns)) of an NTNDArray update; Rejected if unusable."""
    dims = update.get("dimension") or []
    if len(dims) != 2:
        raise Rejected("pva frame that is not a 2D image")
    shape = (int(dims[1]["size"]), int(dims[0]["size"]))  # areaDetector lists x first
    values = update.get("value")
    if isinstance(values, tuple):
        values = values[0]
    if not isinstance(values, dict) or not values:
        raise Rejected("pva frame without data")
    name = selected if selected in values else next(iter(values))
    data = np.asarray(values[name])
    codec = (update.get("codec") or {}).get("name") or ""
    if not codec:
        dtype = UNION_DTYPES.get(name)
        if dtype not in NATIVE_DTYPES:
            raise Rejected(f"pva pixel type {name} not supported")
        if data.size != shape[0] * shape[1]:
            raise Rejected("pva frame of another size than its dimensions")
        return np.ascontiguousarray(data, np.dtype(dtype).newbyteorder("<")).tobytes(), "raw", dtype, shape
    parameters = (update.get("codec") or {}).get("parameters")
    if isinstance(parameters, tuple):
        parameters = parameters[0]
    code = parameters.get("value") if isinstance(parameters, dict) else None
    dtype = CODEC_DTYPES.get(int(code)) if isinstance(code, (int, np.integer)) else None
    if dtype not in NATIVE_DTYPES:
        raise Rejected("pva compressed frame without a supported original data type")
    raw = data.astype(np.uint8, copy=False).tobytes()
    if codec == "lz4":
        return raw, "lz4", dtype, shape
    if codec == "bslz4":  # the HDF5 bitshuffle filter's chunk: 12-byte header + areaDetector's payload
        return codecs.with_bslz4_header(raw, shape[0] * shape[1] * np.dtype(dtype).itemsize), "bslz4", dtype, shape
    raise Rejected(f"pva codec {codec!r} not supported")


@dataclass
class OpenScan:
    scan: str
    frames: int
    last_seen: float = field(default_factory=time.monotonic)


class PvaTranslator:
    """Turns NTNDArray updates into native messages (lists of parts); Rejected (counted) if unusable."""

    def __init__(self, attributes: dict[str, str] | None = None, frames_per_scan: int | None = None,
                 geometry: dict | None = None, prefix: str = "pva", idle_s: float = 10.0):
        self.names = attributes or dict(DEFAULT_ATTRIBUTES)
        self.frames_per_scan, self.geometry, self.prefix, self.idle_s = frames_per_scan, geometry, prefix, idle_s
        self.open: OpenScan | None = None
        self.base: int | None = None  # uniqueId of the first frame of scan number ``first_number`` (cut by count)
        self.first_number = 0
        self.last_unique: int | None = None
        self.dropped = 0  # uniqueId gaps: frames lost between the server and us

    def translate(self, update: dict, selected: str | None = None) -> list[list[bytes]]:
        unique = int(update.get("uniqueId") or 0)
        if not update.get("dimension") and unique == 0:
            return []  # the empty placeholder a monitor may deliver first
        restarted = self.last_unique is not None and unique < self.last_unique  # the detector's counter reset
        if self.last_unique is not None and unique > self.last_unique + 1:
            self.dropped += unique - self.last_unique - 1
        payload, encoding, dtype, shape = frame_of(update, selected)
        attributes = attributes_of(update)
        scan, frames, index, geometry = self.context(attributes, unique, restarted)
        self.last_unique = unique
        out = []
        if self.open is not None and self.open.scan != scan:
            out += self.end()
        if self.open is None:
            start = {"type": "start", "scan": scan, "frames": frames, "shape": list(shape), "dtype": dtype}
            if geometry:
                start["geometry"] = geometry
            if attributes.get(self.names["proposal"]) not in (None, ""):  # whose data it is
                start["proposal"] = str(attributes[self.names["proposal"]])
            out.append([json.dumps(start).encode()])
            self.open = OpenScan(scan, frames)
        self.open.last_seen = time.monotonic()
        header = {"type": "frame", "scan": scan, "index": index}
        if encoding != "raw":
            header["encoding"] = encoding
        out.append([json.dumps(header).encode(), payload])
        if index == self.open.frames - 1:  # its last frame: the scan ends (missing ones stay missing)
            out += self.end()
        return out

    def context(self, attrs: dict, unique: int, restarted: bool) -> tuple[str, int, int, dict | None]:
        """(scan id, frames, index, geometry) from the attributes, or from the frame count."""
        names = self.names
        if attrs.get(names["scan"]) not in (None, ""):
            try:
                scan, frames, index = str(attrs[names["scan"]]), int(attrs[names["frames"]]), int(attrs[names["index"]])
            except (KeyError, TypeError, ValueError):
                raise Rejected(f"pva frame without integer {names['frames']!r} and {names['index']!r} attributes "
                               "beside its scan") from None
            if not 0 <= index < frames:
                raise Rejected("pva frame index outside its scan's frames")
            geometry = self.geometry
            text = attrs.get(names["geometry"])
            if text:
                try:
                    geometry = json.loads(text)
                except (TypeError, ValueError):
                    raise Rejected("pva geometry attribute that is not JSON") from None
            return scan, frames, index, geometry
        if not self.frames_per_scan:
            raise Rejected(f"pva frame without the scan attributes ({names['scan']}, {names['frames']}, "
                           f"{names['index']}) and no --pva-frames")
        n = self.frames_per_scan
        if self.base is None or restarted:  # frames are counted from here: the next scan number
            if self.base is not None:
                self.first_number = self.scan_number(self.last_unique) + 1
            self.base = unique
        number, index = self.scan_number(unique), (unique - self.base) % n  # by uniqueId: a lost frame stays missing
        return f"{self.prefix}-{number}", n, index, self.geometry

    def scan_number(self, unique: int) -> int:
        return self.first_number + (unique - self.base) // self.frames_per_scan

    def end(self) -> list[list[bytes]]:
        if self.open is None:
            return []
        scan, self.open = self.open.scan, None
        return [[json.dumps({"type": "end", "scan": scan}).encode()]]

    def expire(self) -> list[list[bytes]]:
        """The open scan's end once nothing came for ``idle_s`` (its missing frames stay missing)."""
        if self.open is not None and time.monotonic() - self.open.last_seen > self.idle_s:
            log.info("pva scan %s: no frame for %.0f s, ended", self.open.scan, self.idle_s)
            return self.end()
        return []


def loopback_defaults() -> None:
    """pvAccess on this machine only when nothing else is configured (tests, the demo)."""
    os.environ.setdefault("EPICS_PVA_ADDR_LIST", "127.0.0.1")
    os.environ.setdefault("EPICS_PVA_AUTO_ADDR_LIST", "NO")
    os.environ.setdefault("EPICS_PVAS_INTF_ADDR_LIST", "127.0.0.1")


class PvaSource:
    """Subscribes to an NTNDArray channel and hands native messages to ``deliver`` (thread-safe callable)
    from pvapy's thread; the ingest loop calls :meth:`poll` for idle ends and the loss counters."""

    def __init__(self, channel: str, translator: PvaTranslator, deliver, reject, queue_size: int = 1000):
        import pvaccess as pva

        self.translator, self.deliver, self.reject = translator, deliver, reject
        self.lock = threading.Lock()
        self.channel = pva.Channel(channel, pva.PVA)
        self.name, self.connected, self.disconnects = channel, False, 0
        self.channel.setConnectionCallback(self.on_connection)
        # the server keeps a queue per subscriber (queueSize); pvapy's own client-side queue stays off: with
        # it on, updates wait in it instead of reaching the callback
        self.channel.subscribe("cdi-live", self.on_update)
        self.channel.startMonitor(f"record[queueSize={queue_size}]field()")
        self.reported = {"dropped": 0, "overruns": 0, "disconnects": 0}

    def on_connection(self, connected: bool) -> None:
        """pvAccess reconnects by itself; a server gone mid-scan is logged and counted, its scan goes on."""
        if self.connected and not connected:
            self.disconnects += 1
            log.warning("pvAccess channel %s disconnected; waiting for the server to come back", self.name)
        elif connected and not self.connected:
            log.info("pvAccess channel %s connected", self.name)
        self.connected = connected

    def on_update(self, pv) -> None:
        try:
            update = pv.get()
            selected = pv.getSelectedUnionFieldName() if update.get("dimension") else None
        except Exception as exc:  # a structure that is not an NTNDArray
            self.reject(f"pva update unreadable ({type(exc).__name__})")
            return
        with self.lock:  # translated and handed over in the order received, whichever pvapy thread calls
            try:
                messages = self.translator.translate(update, selected)
            except Rejected as exc:
                self.reject(str(exc))
                return
            for message in messages:
                self.deliver(message)

    def poll(self) -> tuple[list[list[bytes]], dict]:
        """(messages of scans ended by idleness, new loss counts since the last poll)."""
        with self.lock:
            ended = self.translator.expire()
            dropped = self.translator.dropped
        try:
            overruns = int(self.channel.getMonitorCounters().get("nOverruns", 0))
        except Exception:
            overruns = self.reported["overruns"]
        new = {"pva_frames_dropped": dropped - self.reported["dropped"], "pva_overruns": overruns - self.reported["overruns"],
               "pva_disconnects": self.disconnects - self.reported["disconnects"]}
        self.reported = {"dropped": dropped, "overruns": overruns, "disconnects": self.disconnects}
        return ended, {k: v for k, v in new.items() if v > 0}

    def close(self) -> None:
        try:
            self.channel.stopMonitor()
            self.channel.unsubscribe("cdi-live")
        except Exception:
            pass
