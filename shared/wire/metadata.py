"""A scan's geometry from the file its beamline writes: SPEC (APS), BLISS HDF5 (ESRF ID01), .fio (PETRA III P10).

``read_metadata(path, scan)`` finds the format from the file itself (HDF5 signature, a .fio's
``%c``/``%p``/``%d`` sections, SPEC's ``#F``/``#S`` lines) and returns the start message's geometry
fields: the beamline, energy, detector distance and pixel, the rocking motor with its first angle
and step, and every circle's angle at the scan's middle in ``angles_deg``. A field the file does
not hold is left out, so ``--geometry`` can complete it; one clear error names a missing scan or
a file that is none of these.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from shared.physics.errors import InputError
from shared.wire.files import DETECTOR_PIXEL_M, geometry_from_spec
from shared.physics.geometry import DIFFRACTOMETERS, HC_KEV_NM

ROCKING_COMMANDS = ("ascan", "dscan", "a2scan", "d2scan", "lup", "fscan")


def read_metadata(path: str | Path, scan: int) -> dict:
    """The geometry of scan ``scan`` in a beamline's metadata file, whatever its format."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such metadata file")
    import h5py

    if h5py.is_hdf5(path):
        return geometry_from_bliss(path, scan)
    head = path.read_bytes()[:4096].decode("latin-1")
    if re.search(r"^%[cpd]\s*$", head, re.M):
        return geometry_from_fio(path, scan)
    if re.search(r"^#[FSE] ", head, re.M):
        return geometry_from_spec(path, scan)
    raise InputError(f"{path}: not a SPEC, BLISS HDF5 or .fio file")


def rocking_command(text: str, where: str) -> tuple[str, float, float, int]:
    """'ascan eta 17.3 17.5 100 0.1' → (motor, first, last, intervals)."""
    words = text.split()
    if len(words) < 5 or words[0] not in ROCKING_COMMANDS:
        raise InputError(f"{where} is not a rocking scan ({text.strip() or 'no scan command'})")
    try:
        return words[1], float(words[2]), float(words[3]), int(words[4])
    except ValueError:
        raise InputError(f"{where}: cannot read the scan command {text.strip()!r}") from None


def _rocking(motor: str, positions, first: float, last: float, intervals: int, where: str) -> dict:
    """θ₀ and the step from the recorded positions (absolute, whatever the command's kind), else the command."""
    positions = np.atleast_1d(np.asarray(positions, float)) if positions is not None else np.empty(0)
    if positions.size > 1:
        first, last, intervals = float(positions[0]), float(positions[-1]), positions.size - 1
    if intervals <= 0 or last == first:
        raise InputError(f"{where} does not move {motor}")
    return {"rocking_motor": motor, "rocking_step_deg": abs(last - first) / intervals, "theta0_deg": first}


def _middle(value) -> float:
    values = np.atleast_1d(np.asarray(value, float))
    return float(values[len(values) // 2])


def _in_metres(dataset) -> float:
    """A length dataset in metres, by its ``units`` attribute (BLISS writes m or mm)."""
    units = dataset.attrs.get("units", "m")
    units = units.decode() if isinstance(units, bytes) else str(units)
    scale = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "microns": 1e-6}.get(units.strip(), None)
    if scale is None:
        raise InputError(f"{dataset.name}: unknown length unit {units!r}")
    return float(np.asarray(dataset[()]).ravel()[0]) * scale


def geometry_from_bliss(path: Path, scan: int) -> dict:
    """ESRF ID01 as BLISS writes a scan (NeXus, read with h5py): ``<n>.1/title`` holds the command,
    ``<n>.1/instrument/positioners/<motor>`` each motor (an array for the scanned one), the detector's
    group ``<n>.1/instrument/<detector>/`` its ``distance``, ``x_pixel_size``, ``beam_center_x/_y`` and
    ``dim_i/_j``, and the energy is ``instrument/monochromator/WaveLength`` (m) or the ``mononrj`` (keV)
    positioner."""
    import h5py

    where = f"{path}: scan {scan}"
    with h5py.File(path, "r") as f:
        entry = f.get(f"{scan}.1")
        if entry is None:
            raise InputError(f"{path}: no scan {scan} in this BLISS file")
        title = entry.get("title")
        motor, first, last, intervals = rocking_command(
            title[()].decode() if isinstance(title[()], bytes) else str(title[()]) if title is not None else "", where)
        positioners = entry.get("instrument/positioners")
        if positioners is None:
            raise InputError(f"{where} has no instrument/positioners")
        setup = DIFFRACTOMETERS["id01"]
        angles = {name: _middle(positioners[name][()]) for name in setup.sample_motors + setup.detector_motors
                  if name in positioners}
        geometry = {"beamline": "id01", "angles_deg": angles,
                    **_rocking(motor, positioners[motor][()] if motor in positioners else None, first, last,
                               intervals, where)}
        wavelength = entry.get("instrument/monochromator/WaveLength")
        if wavelength is not None:
            geometry["energy_kev"] = HC_KEV_NM / (_in_metres(wavelength) * 1e9)
        elif "mononrj" in positioners:
            geometry["energy_kev"] = _middle(positioners["mononrj"][()])
        for name, group in entry["instrument"].items():
            if isinstance(group, h5py.Group) and "distance" in group and "x_pixel_size" in group:
                geometry["distance_m"] = _in_metres(group["distance"])
                geometry["pixel_m"] = _in_metres(group["x_pixel_size"])
                if "beam_center_x" in group and "beam_center_y" in group:
                    geometry["beam_center_px"] = [_middle(group["beam_center_y"][()]),
                                                  _middle(group["beam_center_x"][()])]
                if "dim_i" in group and "dim_j" in group:
                    geometry["detector_shape"] = [int(group["dim_j"][()]), int(group["dim_i"][()])]
                break
    return geometry


def _fio_sections(path: Path) -> tuple[list[str], dict[str, str], list[str], list[list[str]]]:
    """(comment lines, parameters, data column names, data rows) of a .fio file."""
    comments, parameters, columns, rows, section = [], {}, [], [], None
    for line in path.read_text(errors="replace").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("!"):
            continue
        if stripped in ("%c", "%p", "%d"):
            section = stripped[1]
        elif section == "c":
            comments.append(stripped)
        elif section == "p" and "=" in stripped:
            key, value = stripped.split("=", 1)
            parameters[key.strip()] = value.strip()
        elif section == "d" and stripped.startswith("Col "):
            columns.append(stripped.split()[2])
        elif section == "d":
            rows.append(stripped.split())
    return comments, parameters, columns, rows


def geometry_from_fio(path: Path, scan: int) -> dict:
    """PETRA III P10 as its online software writes a scan: ``<sample>_<nnnnn>.fio`` with the command in
    ``%c`` (``ascan om 15.8 16.8 100 0.5``), every motor in ``%p`` (``om``, ``del``, ``gam``, ``mu``,
    ``chi``, ``phi``; ``fmbenergy`` in eV), the scanned motor's positions in ``%d``. The detector's
    distance is ``sdd`` (mm) where the setup records it, and its pixel follows the detector named in
    ``detector`` (default the Eiger 4M's 75 µm)."""
    where = f"{path}: scan {scan}"
    number = re.search(r"_(\d+)\.fio$", path.name)
    if number and int(number.group(1)) != scan:
        raise InputError(f"{path}: this .fio file holds scan {int(number.group(1))}, not {scan}")
    comments, parameters, columns, rows = _fio_sections(path)
    command = next((line for line in comments if line.split()[0] in ROCKING_COMMANDS), "")
    motor, first, last, intervals = rocking_command(command, where)

    def number_of(name: str) -> float | None:
        try:
            return float(parameters[name])
        except (KeyError, ValueError):
            return None

    positions = None
    if motor in columns and rows:
        column = columns.index(motor)
        positions = [float(row[column]) for row in rows if len(row) > column]
    setup = DIFFRACTOMETERS["p10"]
    angles = {name: number_of(name) for name in setup.sample_motors + setup.detector_motors
              if number_of(name) is not None}
    if positions:
        angles[motor] = _middle(positions)
    geometry = {"beamline": "p10", "angles_deg": angles, **_rocking(motor, positions, first, last, intervals, where)}
    if number_of("fmbenergy") is not None:
        geometry["energy_kev"] = number_of("fmbenergy") / 1000.0
    if number_of("sdd") is not None:
        geometry["distance_m"] = number_of("sdd") / 1000.0
    detector = parameters.get("detector", "eiger4m").lower()
    if detector in DETECTOR_PIXEL_M:
        geometry["pixel_m"] = DETECTOR_PIXEL_M[detector]
    return geometry
