"""Play a simulated beamline: push scans frame by frame to the ingest (native protocol)."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from services.cli.options import positive_int


def add_arguments(p):
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="ingest address")
    p.add_argument("--scans", type=positive_int, default=3, help="simulated scans to push")
    p.add_argument("--size", type=positive_int, default=32, help="frames per scan and frame side (simulated)")
    p.add_argument("--photons", type=float, default=1e7, help="photons per simulated scan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--file", type=Path, action="append", default=[], help="recorded scan(s) to push too")
    p.add_argument("--rate", type=float, default=100.0, help="frames per second (0 = as fast as possible)")
    p.add_argument("--encoding", choices=["raw", "lz4", "bslz4"], default="raw")
    p.add_argument("--prefix", default="sim", help="scan id prefix")


def run(args):
    import time

    from services.beamline.sim import GEOMETRY_34IDC, Beamline, recorded_volume, simulated_volume

    beamline = Beamline(args.endpoint)
    stamp = time.strftime("%H%M%S")
    plays = [(f"{args.prefix}-{stamp}-{i}", lambda i=i: simulated_volume(args.size, args.seed, i, args.photons), None)
             for i in range(args.scans)]
    plays += [(f"{path.stem}-{stamp}", lambda path=path: recorded_volume(path), GEOMETRY_34IDC) for path in args.file]
    try:
        for scan, make, geometry in plays:
            volume = make()
            with tqdm(total=volume.shape[0], desc=scan, unit="frame") as bar:
                beamline.play(scan, volume, args.rate, args.encoding, geometry, progress=bar.update)
    finally:
        beamline.close()
    print(f"pushed {len(plays)} scan(s) to {args.endpoint}")
