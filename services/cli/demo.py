"""`make demo`: the whole pipeline on a simulated beamline, watched on the live page.

Starts Redis if none answers (embedded fallback), the ingest, both workers and
the gateway, prints the page's URL, then plays simulated crystals, one with a
module gap and dead pixels flagged as an Eiger sends them (its pixel mask in the
start message), and the recorded APS 34-ID-C scan (from ../shared/data, when
present) frame by frame.
Runs until Ctrl-C, or ``--exit-after`` seconds after the last scan.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm import tqdm

from services.cli.options import positive_int
from services.cli.services_common import add_settings_arguments, refuse_open_exposure, settings_from
from services.cli.up import services_running, wait_until_ready, wait_while_running
from shared.wire import realdata
from shared.wire import detector

RECORDED = realdata.scan54_file()
# the beamline's whitefield and bad-pixel map for the recorded scan's detector area (deploy/calibration/…/README.md)
CALIBRATION = detector.CALIBRATIONS / detector.SCAN54_DETECTOR


def add_arguments(p):
    add_settings_arguments(p)
    p.add_argument("--port", type=int, default=None, help="gateway port (default 8000)")
    p.add_argument("--bind", help="ingest ZeroMQ address (default tcp://127.0.0.1:5555)")
    p.add_argument("--scans", type=int, default=3, help="simulated scans to play (default 3)")
    p.add_argument("--size", type=positive_int, default=64, help="frames per simulated scan and frame side")
    p.add_argument("--rate", type=float, default=20.0, help="frames per second of the simulated beamline")
    p.add_argument("--recorded", type=Path, default=RECORDED,
                   help="recorded scan to play after the simulated ones (default: the APS 34-ID-C scan)")
    p.add_argument("--exit-after", type=float, default=None, help="stop this many seconds after the last scan")


def play_scans(args, endpoint: str) -> None:
    from services.beamline.sim import GEOMETRY_34IDC, Beamline, detector_flaws, recorded_volume, simulated_volume
    from shared.wire.files import geometry_from_spec

    stamp = time.strftime("%H%M%S")
    plays = [(f"sim-{stamp}-{i}", lambda i=i: (simulated_volume(args.size, int(stamp), i, 1e8), None), args.rate,
              GEOMETRY_34IDC) for i in range(args.scans)]

    def with_gap():  # as an Eiger sends it: a module gap beside the peak and dead pixels at 2³²−1, with its mask
        volume = simulated_volume(args.size, int(stamp), args.scans, 1e8)
        peak = int(volume.sum(axis=(0, 1)).argmax())
        return detector_flaws(volume, [peak + 2, peak + 3], [(3, 4), (args.size - 5, 7)])

    plays.append((f"gaps-{stamp}", with_gap, args.rate, GEOMETRY_34IDC))
    if args.recorded and args.recorded.exists():
        spec = args.recorded.with_name("scan54.spec")  # the geometry as the beamline wrote it, when beside the frames
        geometry = geometry_from_spec(spec, 54) if spec.exists() else GEOMETRY_34IDC
        plays.append((f"aps-scan54-{stamp}", lambda: (recorded_volume(args.recorded), None), 100.0, geometry))
    elif args.recorded:
        print(f"(recorded scan {args.recorded} not found: playing simulated scans only)")
    beamline = Beamline(endpoint)
    try:
        for scan, make, rate, geometry in plays:
            volume, mask = make()
            with tqdm(total=volume.shape[0], desc=scan, unit="frame") as bar:
                beamline.play(scan, volume, rate, geometry=geometry, progress=bar.update, pixel_mask=mask)
    finally:
        beamline.close()


def run(args):
    if args.recorded == RECORDED and CALIBRATION.is_dir():  # the recorded scan as 34-ID-C corrects it (its
        os.environ.setdefault("WHITEFIELD_FILE", str(CALIBRATION / "whitefield.npy"))  # 256² frames alone)
        os.environ.setdefault("PIXEL_MASK_FILE", str(CALIBRATION / "bad_pixels.npy"))
    settings = settings_from(args, gateway_port=args.port, ingest_bind=args.bind)
    refuse_open_exposure(settings, insecure=False)  # the demo serves loopback unless access is configured
    base = f"http://{settings.gateway_host}:{settings.gateway_port}"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "services.log"  # their logs and the access log: the terminal shows progress
    with log_path.open("ab") as log, services_running(settings, log=log) as (processes, stopping):
        print(f"starting ingest, workers and gateway (the workers load the network first; log: {log_path})…",
              flush=True)
        wait_until_ready(base, processes, progress=lambda line: print(line, flush=True), where=str(log_path))
        print(f"\n  live page: {base}/   (API docs: {base}/docs)\n", flush=True)
        play_scans(args, settings.ingest_bind)
        print(f"all scans pushed; results keep landing on {base}/ . Ctrl-C stops the demo.")
        wait_while_running(processes, stopping, args.exit_after)
    return 0
