"""Play a simulated beamline: push scans frame by frame to the ingest (native protocol)."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from services.cli.options import add_geometry_arguments, positive_int, read_geometry, whole_number


def add_arguments(p):
    p.add_argument("--endpoint", help="native: the ingest's address (default tcp://127.0.0.1:5555; several "
                   "receivers' addresses comma-separated, as `cdi-live up --receivers N` prints them); "
                                      "dectris: the address this detector binds (default tcp://127.0.0.1:9999)")
    p.add_argument("--protocol", choices=["native", "dectris", "dectris2", "pva"], default="native",
                   help="dectris / dectris2: act as a DECTRIS detector, stream v1 (JSON) / v2 (CBOR); "
                        "run the ingest with --dectris ENDPOINT. pva: an areaDetector publishing NTNDArray "
                        "frames over EPICS pvAccess on --channel; run the ingest with --pva CHANNEL")
    p.add_argument("--channel", default="cdi:sim:image", help="pva: the NTNDArray channel to publish")
    p.add_argument("--scans", type=whole_number, default=3, help="simulated scans to push (0: only --file ones)")
    p.add_argument("--size", type=positive_int, default=32, help="frames per scan and frame side (simulated)")
    p.add_argument("--photons", type=float, default=1e7, help="photons per simulated scan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--file", type=Path, action="append", default=[], help="recorded scan(s) to push too")
    add_geometry_arguments(p, "the recorded scan(s)'")
    p.add_argument("--rate", type=float, default=100.0, help="frames per second (0 = as fast as possible)")
    p.add_argument("--encoding", choices=["raw", "lz4", "bslz4"], default=None,
                   help="frame encoding (default raw for native, bslz4 for dectris)")
    p.add_argument("--prefix", default="sim", help="scan id prefix")
    p.add_argument("--proposal", help="the scans' proposal (native start; DECTRIS v2 user_data); default: the "
                                      "ingest's DEFAULT_PROPOSAL")
    p.add_argument("--gaps", action="store_true", help="a module gap: two detector columns beside the Bragg peak "
                   "flagged at the dtype's maximum, as a DECTRIS detector with its pixel mask applied sends them")
    p.add_argument("--dead", default="", help="dead pixels ROW,COL;ROW,COL… flagged likewise")
    p.add_argument("--saturation", type=float, help="counts clip at this value (the detector's saturation_value)")
    p.add_argument("--no-mask", action="store_true", help="flag the pixels but send no pixel mask in the start "
                   "(the ingest must find the flags itself)")


def run(args):
    import time

    from services.beamline.sim import (GEOMETRY_34IDC, Beamline, DectrisDetector, detector_flaws, recorded_volume,
                                       simulated_volume)

    dectris, pva = args.protocol.startswith("dectris"), args.protocol == "pva"
    endpoint = args.endpoint or ("tcp://127.0.0.1:9999" if dectris else "tcp://127.0.0.1:5555")
    encoding = args.encoding or ("bslz4" if dectris else "raw")
    recorded_geometry = read_geometry(args) or GEOMETRY_34IDC
    if pva:
        from services.beamline.sim import PvaDetector

        beamline = PvaDetector(args.channel)
        time.sleep(2.0)  # the ingest's monitor finds the new server (pvAccess search)
    else:
        beamline = DectrisDetector(endpoint, version=2 if args.protocol == "dectris2" else 1) if dectris else \
            Beamline(endpoint)
    stamp = time.strftime("%H%M%S")
    plays = [(f"{args.prefix}-{stamp}-{i}", lambda i=i: simulated_volume(args.size, args.seed, i, args.photons), None)
             for i in range(args.scans)]
    plays += [(f"{path.stem}-{stamp}", lambda path=path: recorded_volume(path), recorded_geometry) for path in args.file]
    dead = parse_pixels(args.dead)
    try:
        for scan, make, geometry in plays:
            volume, mask = make(), None
            if args.gaps or dead or args.saturation:
                peak_column = volume.sum(axis=(0, 1)).argmax()
                gaps = [c for c in (peak_column + 2, peak_column + 3) if c < volume.shape[2]] if args.gaps else []
                volume, mask = detector_flaws(volume, gaps, dead, args.saturation)
                mask = None if args.no_mask or not mask.any() else mask
            flaws = {"pixel_mask": mask, "saturation": args.saturation, "proposal": args.proposal}
            with tqdm(total=volume.shape[0], desc=scan, unit="frame") as bar:
                if pva:  # the scan context rides in each frame's NDAttributes
                    beamline.play(scan, volume, args.rate, encoding, geometry, progress=bar.update)
                elif dectris:  # series ids are the scan names; only stream v2 carries the geometry (user_data)
                    beamline.play(scan, volume, args.rate, encoding, progress=bar.update, geometry=geometry, **flaws)
                else:
                    beamline.play(scan, volume, args.rate, encoding, geometry, progress=bar.update, **flaws)
    finally:
        beamline.close()
    where = f"on pvAccess channel {args.channel}" if pva else f"{'from' if dectris else 'to'} {endpoint}"
    print(f"pushed {len(plays)} scan(s) {where}")


def parse_pixels(text: str) -> list[tuple[int, int]]:
    """'3,4;10,2' → [(3, 4), (10, 2)]."""
    from shared.physics.errors import InputError

    pixels = []
    for item in filter(None, text.replace(" ", "").split(";")):
        try:
            row, column = (int(v) for v in item.split(","))
        except ValueError:
            raise InputError(f"--dead: {item!r} is not ROW,COL") from None
        pixels.append((row, column))
    return pixels
