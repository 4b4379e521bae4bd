"""Argument types shared by subcommands, with one-line error messages."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.physics.errors import InputError


def number(text: str, kind=float, what: str = "a number"):
    """``text`` as ``kind`` (int, float), or the one-line error argparse prints."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def whole_number(text: str) -> int:
    """A whole number ≥ 0."""
    value = number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def fraction(text: str) -> float:
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def photon_range(text: str) -> tuple[float, float]:
    """'0' (noiseless), '1e6' (fixed) or '1e5:1e8' (log-uniform range)."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a count like 1e6 or a range like 1e5:1e8") from None
    if len(parts) not in (1, 2) or any(p < 0 for p in parts) or (len(parts) == 2 and not 0 < parts[0] <= parts[1]):
        raise argparse.ArgumentTypeError(f"{text!r}: use 0, a positive count, or LOW:HIGH with 0 < LOW <= HIGH")
    return (parts[0], parts[-1])


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def add_geometry_arguments(p, scans: str = "the scan's") -> None:
    """--geometry, --metadata/--spec and --scan: where a scan's diffractometer geometry comes from."""
    p.add_argument("--geometry", type=Path, help=f"GEOMETRY.json: {scans} geometry fields (the start message's); "
                   "with --metadata, fields it sets win")
    p.add_argument("--metadata", type=Path, help=f"the beamline's file to read {scans} geometry from (with --scan): "
                   "SPEC (APS 34-ID-C), BLISS HDF5 (ESRF ID01) or .fio (PETRA III P10), found from the file")
    p.add_argument("--spec", type=Path, help="a SPEC file (as --metadata)")
    p.add_argument("--scan", type=int, help="scan number in --metadata/--spec")


def read_geometry(args) -> dict | None:
    """--geometry JSON and/or --metadata (--spec)/--scan → a checked geometry dict (None if none is given).
    The metadata file gives what it holds; the JSON completes or corrects it."""
    from shared.physics.geometry import check

    metadata = getattr(args, "metadata", None)
    if metadata is not None and args.spec is not None:
        raise InputError("give --metadata or --spec, not both")
    metadata = metadata if metadata is not None else args.spec
    geometry = {}
    if metadata is not None:
        if args.scan is None:
            raise InputError(f"{'--spec' if args.spec is not None else '--metadata'} needs --scan N")
        from shared.wire.metadata import read_metadata

        geometry = read_metadata(metadata, args.scan)
    if args.geometry is not None:
        from shared.wire.files import read_json_object

        given = read_json_object(args.geometry, "geometry fields")
        angles = {**(geometry.get("angles_deg") or {}), **(given.get("angles_deg") or {})}
        geometry = {**geometry, **given, **({"angles_deg": angles} if angles else {})}
    if metadata is None and args.geometry is None:
        return None
    return check(geometry)


def add_pva_arguments(p) -> None:
    """areaDetector frames over EPICS pvAccess (``services.ingest.pva``), for `ingest` and `up`."""
    p.add_argument("--pva", metavar="CHANNEL", help="also subscribe to this areaDetector NTNDArray channel "
                   "(NDPluginPva) over EPICS pvAccess")
    p.add_argument("--pva-attributes", metavar="scan=NAME,frames=NAME,index=NAME,geometry=NAME,proposal=NAME",
                   help="the frames' NDAttribute names holding the scan id, its frame count, the 0-based index, "
                   "the geometry JSON and the proposal (default: scan, frames, index, geometry, proposal)")
    p.add_argument("--pva-frames", type=positive_int, metavar="N",
                   help="frames without scan attributes are cut into scans of N consecutive frames")
    p.add_argument("--pva-idle", type=positive_float, default=10.0, metavar="SECONDS",
                   help="a PVA scan with no frame for this long ends (its missing frames stay missing)")
    add_geometry_arguments(p, "the PVA scans'")


def pva_config(args) -> dict | None:
    """The ingest's ``pva`` argument from those options (None without --pva); InputError if inconsistent."""
    from services.ingest.pva import parse_attribute_map

    if not getattr(args, "pva", None):
        if getattr(args, "pva_frames", None) or getattr(args, "pva_attributes", None):
            raise InputError("--pva-frames and --pva-attributes need --pva CHANNEL")
        return None
    try:
        names = parse_attribute_map(args.pva_attributes)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return {"channel": args.pva, "attributes": names, "frames_per_scan": args.pva_frames,
            "geometry": read_geometry(args), "idle_s": args.pva_idle}


def check_receivers(settings, pva: dict | None) -> None:
    """This receiver's index is one of INGEST_RECEIVERS, and a pvAccess channel has one receiver (one line, exit 2)."""
    if settings.ingest_receiver >= settings.ingest_receivers:
        raise InputError(f"--receiver {settings.ingest_receiver} is not one of 0 … {settings.ingest_receivers - 1}")
    if pva and settings.ingest_receivers > 1:
        raise InputError("--pva takes one receiver: a pvAccess monitor is not dealt among several")


def pva_command_line(args) -> list[str]:
    """The same options, for a child `cdi-live ingest` (``cdi-live up``)."""
    if not getattr(args, "pva", None):
        return []
    out = ["--pva", args.pva, "--pva-idle", str(args.pva_idle)]
    for flag, value in (("--pva-attributes", args.pva_attributes), ("--pva-frames", args.pva_frames),
                        ("--geometry", args.geometry), ("--metadata", args.metadata), ("--spec", args.spec),
                        ("--scan", args.scan)):
        if value is not None:
            out += [flag, str(value)]
    return out

