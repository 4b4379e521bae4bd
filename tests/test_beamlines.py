"""The beamlines BCDI users work at: APS 34-ID-C, ESRF ID01, PETRA III P10, APS 28-ID-B.

For each: the Bragg direction against xrayutilities' own ``QConversion`` and against rotations
written out here; a strained sphere simulated in that beamline's geometry comes back in the lab
frame with its size, shape and strain gradient; and the geometry read from the file the beamline
writes (BLISS HDF5 for ID01, .fio for P10; SPEC for APS is tested in test_geometry.py)."""

import json

import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi

from shared.physics.errors import InputError
from shared.wire.messages import Geometry
from shared.wire.metadata import read_metadata
from shared.physics import geometry as geo
from shared.physics.crystals import sphere_in_geometry
from tests.test_cli import cli

BEAMLINES = geo.EXAMPLES


def rotation(axis: str, degrees: float) -> np.ndarray:
    """Rotation about a lab axis written like xrayutilities' circles ('y-' = about −y, right-handed)."""
    sign = 1 if axis[1] == "+" else -1
    c, s = np.cos(np.radians(sign * degrees)), np.sin(np.radians(sign * degrees))
    i = "xyz".index(axis[0])
    j, k = (i + 1) % 3, (i + 2) % 3
    r = np.eye(3)
    r[j, j], r[j, k], r[k, j], r[k, k] = c, -s, s, c
    return r


def first_principles_q(g: dict) -> np.ndarray:
    """Q = k(k̂_f − k̂_i) with k̂_f the beam turned by the detector circles, outermost last applied."""
    setup = geo.DIFFRACTOMETERS[g["beamline"]]
    _, detector = geo.circle_angles(g)
    arm = np.eye(3)
    for (_, axis), angle in zip(setup.detector_circles, detector):
        arm = arm @ rotation(axis, angle)
    k = 2 * np.pi * g["energy_kev"] / geo.HC_KEV_NM
    beam = np.asarray(setup.beam, float)
    return k * (arm @ beam - beam)


@pytest.mark.parametrize("name", BEAMLINES)
def test_bragg_direction_agrees_with_xrayutilities(name):
    import xrayutilities as xu

    g = BEAMLINES[name]
    _, q_peak = geo.reciprocal_steps(g, (64, 256, 256))
    g_hat, _ = geo.bragg_direction(q_peak)
    setup = geo.DIFFRACTOMETERS[name]
    sample, detector = geo.circle_angles(g)
    convert = xu.experiment.QConversion([a for _, a in setup.sample_circles], [a for _, a in setup.detector_circles],
                                        setup.beam, en=1000 * g["energy_kev"])
    q_sample = np.array(convert(*sample, *detector, deg=True)).ravel()  # point detector, sample frame
    q_lab = convert.transformSample2Lab(q_sample, *sample)
    for reference in (q_lab, first_principles_q(g)):
        angle = np.degrees(np.arccos(np.clip(g_hat @ reference / np.linalg.norm(reference), -1, 1)))
        assert angle < 0.2, (name, angle)
    assert np.linalg.norm(q_peak) == pytest.approx(np.linalg.norm(q_lab) * 10, rel=1e-4)  # 1/Å → 1/nm


def test_the_rocking_circle_tilts_with_the_circles_outside_it():
    """ID01 rocks eta inside mu: mu tilts the rocking axis, so the frame step changes; eta's own angle does not."""
    g = BEAMLINES["id01"]
    base, _ = geo.reciprocal_steps(g, (64, 256, 256))
    other_eta, _ = geo.reciprocal_steps({**g, "angles_deg": {**g["angles_deg"], "eta": 3.0}}, (64, 256, 256))
    tilted, _ = geo.reciprocal_steps({**g, "angles_deg": {**g["angles_deg"], "mu": 5.0}}, (64, 256, 256))
    assert np.allclose(base, other_eta, atol=1e-9)
    assert not np.allclose(base[:, 0], tilted[:, 0], atol=1e-6) and np.allclose(base[:, 1:], tilted[:, 1:])


def test_contract_example_is_a_start_message_geometry():
    example = {"beamline": "id01", "energy_kev": 8.0, "distance_m": 1.0, "pixel_m": 55e-6, "rocking_motor": "eta",
               "rocking_step_deg": 0.005, "angles_deg": {"mu": 0, "eta": 17.4, "phi": 0, "nu": 0.8, "delta": 34.9}}
    assert Geometry(**example).angles_deg["delta"] == 34.9
    assert Geometry(beamline="p10", energy_kev=9, distance_m=1, pixel_m=75e-6, rocking_step_deg=0.01).rocking_motor == "om"
    with pytest.raises(ValueError, match="no circle 'gamma'"):
        Geometry(**{**example, "angles_deg": {"gamma": 3.0}})
    with pytest.raises(ValueError, match="not a sample circle"):
        Geometry(**{**example, "rocking_motor": "delta"})
    with pytest.raises(InputError, match="all 0"):
        geo.check({**example, "angles_deg": {"eta": 17.4}})


@pytest.mark.parametrize("name", ["id01", "p10", "28idb"])
def test_strained_sphere_comes_back_in_each_beamlines_lab_frame(tmp_path, name):
    geometry = {**BEAMLINES[name], "detector_shape": [256, 256], "detector_roi": [96, 96]}
    intensity, truth = sphere_in_geometry(geometry)
    radius, up, a = truth["radius_nm"], truth["vertical"], truth["strain_coefficient"]
    np.save(tmp_path / "sphere.npy", intensity)
    (tmp_path / "geometry.json").write_text(json.dumps(geometry))
    result = cli("reconstruct", tmp_path / "sphere.npy", "--refine", "--geometry", tmp_path / "geometry.json",
                 "--out", tmp_path / "out.h5")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "out.h5") as f:
        lab = f["lab"]
        amplitude, strain = lab["amplitude"][()], lab["strain"][()]
        spacing, direction = lab.attrs["voxel_nm"], lab.attrs["bragg_direction"]
    shape = amplitude > 0.5
    points = (np.argwhere(shape) - np.argwhere(shape).mean(axis=0)) * spacing[0]
    across = [axis for axis in range(3) if up[axis] == 0]  # the cut is across ``up``
    size = np.sqrt(5 * np.mean(points[:, across] ** 2, axis=0))
    assert size == pytest.approx([radius, radius], rel=0.05)
    inner = ndi.binary_erosion(amplitude > 0.3, iterations=2)
    where = (np.argwhere(inner) - np.argwhere(inner).mean(axis=0)) * spacing[0]
    fit, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(where)), where]), strain[inner], rcond=None)
    gradient = fit[1:]  # the twin flips its sign; size and direction are what BCDI can tell
    assert np.linalg.norm(gradient) == pytest.approx(2 * a, rel=0.15)
    assert np.degrees(np.arccos(abs(gradient @ direction) / np.linalg.norm(gradient))) < 8
    expected = first_principles_q(geometry)
    assert np.degrees(np.arccos(np.clip(direction @ expected / np.linalg.norm(expected), -1, 1))) < 0.2


def write_bliss_scan(path, scan: int = 12):
    """An ID01 scan in BLISS' NeXus layout (the file BLISS writes per dataset, read at ID01 with h5py/silx):
    ``<n>.1/title``, ``instrument/positioners`` with the scanned motor as an array, the detector's group with
    its calibration, the monochromator's wavelength; frames in ``measurement/<detector>``."""
    eta = np.linspace(17.30, 17.50, 41)
    with h5py.File(path, "w") as f:
        entry = f.create_group(f"{scan}.1")
        entry.attrs["NX_class"] = "NXentry"
        entry["title"] = "ascan eta 17.3 17.5 40 0.5"
        positioners = entry.create_group("instrument/positioners")
        for motor, value in {"mu": 0.0, "eta": eta, "phi": -12.0, "nu": 0.8, "delta": 34.9, "mononrj": 8.0}.items():
            positioners[motor] = value
        positioners["delta"].attrs["units"] = "deg"
        detector = entry.create_group("instrument/mpx1x4")
        detector.attrs["NX_class"] = "NXdetector"
        for key, value, units in (("distance", 0.83, "m"), ("x_pixel_size", 55e-6, "m"), ("y_pixel_size", 55e-6, "m"),
                                  ("beam_center_x", 257.5, "pixel"), ("beam_center_y", 231.0, "pixel")):
            detector[key] = value
            detector[key].attrs["units"] = units
        detector["dim_i"], detector["dim_j"] = 516, 516
        entry["instrument/monochromator/WaveLength"] = geo.HC_KEV_NM / 8.0 * 1e-9
        entry["measurement/mpx1x4"] = np.zeros((41, 8, 8), np.uint32)
        entry["measurement/eta"] = eta


FIO = """!
! Comments
!
%c
ascan om 15.5 16.5 50 0.5
user p10user Acquisition started at Wed Dec  2 21:40:12 2026
sweep motor lag: 1.0e-3
!
! Parameter
!
%p
del = 31.0
gam = 6.0
om = 16.0
mu = 0.5
chi = 90.0
phi = 0.0
fmbenergy = 9000.0
sdd = 1830.0
detector = eiger4m
!
! Data
!
%d
 Col 1 om DOUBLE
 Col 2 eiger4m_roi1 DOUBLE
 Col 3 timestamp DOUBLE
"""


def write_fio_scan(path):
    """A P10 scan as P10's online software writes it: ``<sample>_<nnnnn>.fio`` with %c (the command), %p (every
    motor and the energy in eV) and %d (a column per counter, the scanned motor first)."""
    rows = "".join(f" {15.5 + k * 0.02:.4f} {100 + k} {1.7e9 + k}\n" for k in range(51))
    path.write_text(FIO + rows)


def test_bliss_file_gives_the_id01_geometry(tmp_path):
    write_bliss_scan(tmp_path / "sample_0001.h5")
    g = geo.check(read_metadata(tmp_path / "sample_0001.h5", 12))
    assert g["beamline"] == "id01" and g["rocking_motor"] == "eta"
    assert g["rocking_step_deg"] == pytest.approx(0.005) and g["theta0_deg"] == pytest.approx(17.3)
    assert g["angles_deg"] == pytest.approx({"mu": 0.0, "eta": 17.4, "phi": -12.0, "nu": 0.8, "delta": 34.9})
    assert g["energy_kev"] == pytest.approx(8.0) and g["distance_m"] == pytest.approx(0.83)
    assert g["pixel_m"] == 55e-6 and g["beam_center_px"] == [231.0, 257.5] and g["detector_shape"] == [516, 516]
    Geometry(**g)  # exactly the start message's fields
    with pytest.raises(InputError, match="no scan 3"):
        read_metadata(tmp_path / "sample_0001.h5", 3)


def test_fio_file_gives_the_p10_geometry(tmp_path):
    write_fio_scan(tmp_path / "align_00042.fio")
    g = geo.check(read_metadata(tmp_path / "align_00042.fio", 42))
    assert g["beamline"] == "p10" and g["rocking_motor"] == "om"
    assert g["rocking_step_deg"] == pytest.approx(0.02) and g["theta0_deg"] == pytest.approx(15.5)
    assert g["angles_deg"]["del"] == 31.0 and g["angles_deg"]["gam"] == 6.0 and g["angles_deg"]["om"] == pytest.approx(16.0)
    assert g["energy_kev"] == pytest.approx(9.0) and g["distance_m"] == pytest.approx(1.83) and g["pixel_m"] == 75e-6
    Geometry(**g)
    with pytest.raises(InputError, match="holds scan 42, not 7"):
        read_metadata(tmp_path / "align_00042.fio", 7)


def test_metadata_on_the_command_line(tmp_path):
    write_fio_scan(tmp_path / "align_00042.fio")
    (tmp_path / "junk.txt").write_text("not a beamline file\n")
    np.save(tmp_path / "in.npy", np.ones((40, 40, 40), np.float32))
    for args, message in ((["--metadata", "align_00042.fio"], "--metadata needs --scan"),
                          (["--metadata", "junk.txt", "--scan", "1"], "not a SPEC, BLISS HDF5 or .fio file"),
                          (["--metadata", "align_00042.fio", "--scan", "9"], "not 9")):
        result = cli("reconstruct", "in.npy", "--out", "o.h5", *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
