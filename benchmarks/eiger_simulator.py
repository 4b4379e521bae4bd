"""A detector simulator no one here wrote: ALBA's `eiger-simulator` (PyPI; DECTRIS SIMPLON REST API and
stream v1, Eiger 9M) plays 40 frames at 50 Hz into `cdi-live ingest --dectris`, beside the same frames
on a 256² detector sent natively, to one deployment at its defaults.

Real data: 40 frames of scan 54 around its Bragg peak, pasted off-centre into 3269×3110 uint16 frames
(the simulator's dataset: a DECTRIS-style HDF5 file, ``entry/data/data_000001``); the simulator sends them
Bitshuffle-LZ4 (``bs16-lz4<``, its default, without the HDF5 filter's 12-byte header: the ingest puts it in
front). Frames are clipped to uint16. Measured: seconds from the series' end to the preview, refined and
full-grid results, χ of each, frames received.

    pip install eiger-simulator   # not a dependency of cdi-live: a yardstick
    .venv/bin/python benchmarks/eiger_simulator.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402

from benchmarks.beamtime_load import Deployment, Events, stage_times  # noqa: E402
from benchmarks.scale_out import free_port  # noqa: E402
from services.beamline.sim import Beamline  # noqa: E402
from shared.wire import realdata  # noqa: E402

ROWS, COLUMNS = 3269, 3110  # an Eiger 9M: y_pixels_in_detector × x_pixels_in_detector
CORNER = (2100, 700)
FRAMES, RATE_HZ = 40, 50


def write_dataset(folder: Path, frames: np.ndarray) -> Path:
    path = folder / "scan54_9m_master.h5"
    with h5py.File(path, "w") as f:
        data = f.create_dataset("entry/data/data_000001", (len(frames), ROWS, COLUMNS), np.uint16,
                                chunks=(1, ROWS, COLUMNS), compression="gzip", compression_opts=1)
        for k, frame in enumerate(frames):
            whole = np.zeros((ROWS, COLUMNS), np.uint16)
            whole[CORNER[0]:CORNER[0] + 256, CORNER[1]:CORNER[1] + 256] = np.minimum(frame, 65534)
            data[k] = whole
    return path


def main() -> None:
    if not shutil.which("eiger-simulator") and not (Path(sys.executable).parent / "eiger-simulator").exists():
        sys.exit("needs ALBA's eiger-simulator: pip install eiger-simulator")
    if not realdata.scan54_file().exists():
        sys.exit(f"needs the real data in {realdata.folder()}")
    frames = realdata.scan54_frames(None)
    peak = int(np.argmax(frames.sum(axis=(1, 2))))
    frames = frames[peak - FRAMES // 2:peak + FRAMES // 2]
    folder = Path(tempfile.mkdtemp(prefix="eigersim-"))
    dataset = write_dataset(folder, frames)
    port, stream = free_port(), f"tcp://127.0.0.1:{free_port()}"
    simulator = subprocess.Popen([str(Path(sys.executable).parent / "eiger-simulator"), "--host", "127.0.0.1",
                                  "--port", str(port), "--zmq", stream, "--dataset", str(dataset),
                                  "--max-memory", str(4 * 10**9), "--log-level", "warning"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/detector/api/1.6.0"
    prefix = f"eigersim{uuid.uuid4().hex[:6]}"
    deployment = Deployment(prefix, free_port(), free_port())
    events = Events(redis.Redis(), prefix)
    events.start()
    ingest = None
    results = {}
    try:
        deployment.start()
        ingest = subprocess.Popen([sys.executable, "-m", "services.cli.main", "ingest", "--dectris", stream,
                                   "--dectris-version", "1"], env=deployment.env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                requests.get(f"{api}/config/nimages", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        requests.put(f"{api}/config/nimages", json={"value": FRAMES}, timeout=10)
        requests.put(f"{api}/config/count_time", json={"value": 1 / RATE_HZ}, timeout=10)
        began = time.time()
        requests.put(f"{api}/command/initialize", timeout=600)  # builds the simulator's compressed frames
        print(f"simulator initialized in {time.time() - began:.0f} s", flush=True)
        time.sleep(2)  # the ingest connected to its stream
        series = requests.put(f"{api}/command/arm", timeout=30).json()
        series = series.get("sequence id", series) if isinstance(series, dict) else series
        requests.put(f"{api}/command/trigger", timeout=600)
        while requests.get(f"{api}/status/state", timeout=10).json().get("value") not in ("ready", "idle"):
            time.sleep(0.05)
        end = time.time()
        requests.put(f"{api}/command/disarm", timeout=30)
        scan = f"series-{series}"
        results["eiger9m_simulator"] = {**stage_times(events, scan, end),
                                        "frames_received": (json.loads(redis.Redis().hget(
                                            f"{prefix}:scan:{scan}", "frames_received") or b"null"))}
        print("eiger-simulator, 9M, bslz4:", results["eiger9m_simulator"], flush=True)
        beamline = Beamline(f"tcp://127.0.0.1:{deployment.zport}")
        beamline.play("s54-256", np.minimum(frames, 65534).astype(np.uint16), rate_hz=RATE_HZ)
        end = time.time()
        beamline.close()
        results["256x256_native"] = stage_times(events, "s54-256", end)
        print("native, 256²:", results["256x256_native"], flush=True)
    finally:
        if ingest is not None:
            ingest.terminate()
            ingest.wait(30)
        deployment.stop()
        simulator.terminate()
        simulator.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    small, large = results.get("256x256_native", {}), results.get("eiger9m_simulator", {})
    for stage in ("refined", "full"):
        if small.get(f"end_to_{stage}_s") and large.get(f"end_to_{stage}_s"):
            print(f"{stage}: 9M from eiger-simulator {large[f'end_to_{stage}_s'] / small[f'end_to_{stage}_s']:.2f}× "
                  f"the time of the same frames on 256² (target ≤ 1.5×)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
