"""Bluesky → cdi-live: a RunEngine callback that streams a run's detector images to the ingest, and an
adaptive rocking scan that stops when the service says more frames would not change the answer.

    from bluesky import RunEngine
    from shared.wire.bluesky import CdiLiveCallback, adaptive_rocking_scan

    RE = RunEngine({})
    RE.subscribe(CdiLiveCallback("tcp://127.0.0.1:5555", "image", geometry={...}))
    RE(adaptive_rocking_scan(image, th, -0.08, 0.08, 32, gateway="http://127.0.0.1:8000"))

A run maps to one scan: its id is the start document's ``cdi_live_scan`` (else ``bluesky-`` and the
run uid's first 8 characters), its frame count ``num_points``, its geometry the callback's
``geometry`` or the start document's ``geometry``, its proposal the start document's ``proposal_id``; each event carrying ``image_field`` is the next
frame, in event order. A run that ends with exit status ``abort`` or ``fail`` ends its scan as
failed (frames kept). Needs the optional extra ``bluesky`` (bluesky, ophyd, event-model).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import numpy as np
import zmq
from event_model import DocumentRouter

log = logging.getLogger("cdi-live.bluesky")

INTEGER_TYPES = ("uint8", "uint16", "uint32", "int32")


def scan_id(start_doc: dict) -> str:
    return str(start_doc.get("cdi_live_scan") or f"bluesky-{start_doc['uid'][:8]}")


class CdiLiveCallback(DocumentRouter):
    """Subscribe to a RunEngine: each run's images go to the ingest (native protocol, ZeroMQ PUSH)."""

    def __init__(self, endpoint: str, image_field: str, geometry: dict | None = None, linger_ms: int = 10000):
        super().__init__()
        self.endpoint, self.image_field, self.geometry = endpoint, image_field, geometry
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, 100000)
        self.socket.setsockopt(zmq.LINGER, linger_ms)
        for address in endpoint.split(","):  # several ingest receivers: ZeroMQ deals the documents' frames
            self.socket.connect(address.strip())
        self.run: dict | None = None  # the run being acquired: scan id, frames, geometry, frames sent
        self.streams: set[str] = set()  # descriptors whose events carry the image

    def send(self, header: dict, payload: bytes | None = None) -> None:
        self.socket.send_multipart([json.dumps(header).encode()] + ([payload] if payload is not None else []))

    def start(self, doc):
        frames = doc.get("num_points")
        if not frames:
            log.error("run %s has no num_points: cdi-live needs the frame count; the run is not streamed", doc["uid"])
            self.run = None
            return
        self.run = {"scan": scan_id(doc), "frames": int(frames), "geometry": self.geometry or doc.get("geometry"),
                    "proposal": doc.get("proposal_id"), "sent": 0, "started": False}
        self.streams = set()

    def descriptor(self, doc):
        if self.run is not None and self.image_field in doc.get("data_keys", {}):
            self.streams.add(doc["uid"])

    def event(self, doc):
        run = self.run
        if run is None or doc["descriptor"] not in self.streams:
            return
        if doc.get("filled", {}).get(self.image_field) is False:
            raise ValueError(f"{self.image_field!r} is an external reference: cdi-live needs filled events")
        image = np.asarray(doc["data"][self.image_field])
        dtype = "float32" if image.dtype.kind == "f" else "uint32" if image.dtype.kind in "ub" else "int32"
        if not run["started"]:
            start = {"type": "start", "scan": run["scan"], "frames": run["frames"], "shape": list(image.shape),
                     "dtype": dtype, **({"proposal": str(run["proposal"])} if run["proposal"] else {})}
            if run["geometry"]:
                start["geometry"] = run["geometry"]
            self.send(start)
            run["started"] = True
        if run["sent"] >= run["frames"]:
            log.warning("scan %s: more images than num_points; the extra ones are not sent", run["scan"])
            return
        self.send({"type": "frame", "scan": run["scan"], "index": run["sent"]},
                  np.ascontiguousarray(image, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
        run["sent"] += 1

    def stop(self, doc):
        run, self.run = self.run, None
        if run is None or not run["started"]:
            return  # nothing reached the ingest
        end = {"type": "end", "scan": run["scan"]}
        if doc.get("exit_status") in ("abort", "fail"):
            end["aborted"] = f"bluesky run {doc['exit_status']}: {doc.get('reason') or 'no reason given'}"[:500]
        self.send(end)

    def close(self) -> None:
        self.socket.close()
        self.context.term()


def converged(gateway: str, scan: str, timeout: float = 1.0) -> bool:
    """Whether the service has marked ``scan`` converged. An unreachable gateway says no: the scan goes on."""
    try:
        with urllib.request.urlopen(f"{gateway.rstrip('/')}/api/scans/{scan}", timeout=timeout) as response:
            return json.load(response).get("converged_at_frames") is not None
    except (urllib.error.URLError, OSError, ValueError):
        return False


def adaptive_rocking_scan(detector, motor, start: float, stop: float, num: int, *, gateway: str = "http://127.0.0.1:8000",
                          scan: str | None = None, dwell: float = 0.0, md: dict | None = None):
    """Rock ``motor`` from ``start`` to ``stop`` in ``num`` points, reading ``detector`` at each, and stop
    early once cdi-live marks the scan converged (``converged_at_frames``; asked after every point).

    ``dwell``: seconds to wait at each point (what an exposure takes; simulated detectors take none).
    The run's metadata carries ``cdi_live_scan`` and ``num_points`` for :class:`CdiLiveCallback`, and
    ``stopped_early_at`` is in the plan's return value."""
    import uuid

    from bluesky import plan_stubs as bps
    from bluesky import preprocessors as bpp

    scan = scan or f"rock-{uuid.uuid4().hex[:8]}"
    positions = np.linspace(start, stop, num)
    metadata = {"cdi_live_scan": scan, "num_points": int(num), "plan_name": "adaptive_rocking_scan",
                "detectors": [detector.name], "motors": [motor.name],
                "plan_args": {"start": float(start), "stop": float(stop), "num": int(num)}, **(md or {})}

    @bpp.stage_decorator([detector, motor])
    @bpp.run_decorator(md=metadata)
    def rock():
        for k, position in enumerate(positions):
            yield from bps.mv(motor, float(position))
            yield from bps.trigger_and_read([detector, motor])
            if dwell:
                yield from bps.sleep(dwell)
            if k + 1 < num and converged(gateway, scan):
                log.info("scan %s converged: stopping after %d of %d points", scan, k + 1, num)
                return {"scan": scan, "stopped_early_at": k + 1}
        return {"scan": scan, "stopped_early_at": None}

    return (yield from rock())
