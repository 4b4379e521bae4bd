"""A scan on an Eiger-9M-size detector against the same frames on a 256² one, through `cdi-live up`.

Real data: 40 frames of APS 34-ID-C scan 54 around its Bragg peak (256² each), sent once as they are
and once pasted off-centre into 3110×3269 frames (an Eiger 9M), Bitshuffle-LZ4 as DECTRIS sends them,
to one deployment at its defaults. Measured: seconds from each scan's end to its preview, refined and
full-grid results, χ of each, and the ingest's peak memory.

    .venv/bin/python benchmarks/large_detector.py
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from benchmarks.beamtime_load import Deployment, Events, stage_times  # noqa: E402
from benchmarks.scale_out import free_port  # noqa: E402
from services.beamline.sim import GEOMETRY_34IDC, Beamline  # noqa: E402
from shared.wire import realdata  # noqa: E402
from shared.wire import codecs  # noqa: E402

EIGER_9M = (3110, 3269)
CORNER = (2100, 700)  # where the 256² of signal sits on the large detector


def send(beamline: Beamline, scan: str, frames: np.ndarray, large: bool) -> float:
    shape = EIGER_9M if large else frames.shape[1:]
    beamline.send({"type": "start", "scan": scan, "frames": len(frames), "shape": list(shape), "dtype": "uint32",
                   "geometry": GEOMETRY_34IDC})
    for k, frame in enumerate(frames):
        if large:
            whole = np.zeros(EIGER_9M, np.uint32)
            whole[CORNER[0]:CORNER[0] + 256, CORNER[1]:CORNER[1] + 256] = frame
            frame = whole
        beamline.send({"type": "frame", "scan": scan, "index": k, "encoding": "bslz4"}, codecs.encode(frame, "bslz4"))
    beamline.send({"type": "end", "scan": scan})
    return time.time()


def main() -> None:
    if not realdata.scan54_file().exists():
        sys.exit(f"needs the real data in {realdata.folder()}")
    frames = realdata.scan54_frames(None)
    peak = int(np.argmax(frames.sum(axis=(1, 2))))
    frames = frames[peak - 20:peak + 20]
    prefix = f"large{uuid.uuid4().hex[:6]}"
    deployment = Deployment(prefix, free_port(), free_port())
    events = Events(redis.Redis(), prefix)
    events.start()
    results = {}
    try:
        deployment.start()
        beamline = Beamline(f"tcp://127.0.0.1:{deployment.zport}")
        for name, large in (("256x256", False), ("eiger9m", True)):
            scan = f"s54-{name}"
            end = send(beamline, scan, frames, large)
            results[name] = out = stage_times(events, scan, end)
            print(name, out, flush=True)
        beamline.close()
    finally:
        deployment.stop()
    small, large = results["256x256"], results["eiger9m"]
    for stage in ("refined", "full"):
        if small[f"end_to_{stage}_s"] and large[f"end_to_{stage}_s"]:
            print(f"{stage}: 9M detector {large[f'end_to_{stage}_s'] / small[f'end_to_{stage}_s']:.2f}× the time "
                  f"of the same frames on 256² (target ≤ 1.5×)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
