"""Detector-to-lab geometry: xrayutilities against an independent derivation, and a strained sphere
through the exact forward model back to the lab frame via `reconstruct --refine --geometry`."""

import json

import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi

from shared.wire import realdata
from shared.physics.errors import InputError
from shared.wire.files import geometry_from_spec
from shared.physics import geometry as geo
from shared.physics.crystals import sphere_in_geometry
from tests.conftest import real_file
from tests.test_cli import cli

SCAN54 = {"energy_kev": 9.0, "distance_m": 0.5, "pixel_m": 55e-6, "rocking_step_deg": 0.005,
          "delta_deg": 32.174, "gamma_deg": 12.6346}


def rotation(axis: str, degrees: float) -> np.ndarray:
    """Right-handed rotation about lab axis 'x' or 'y' (written out, not taken from any library)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def independent_steps(g, shape, peak):
    """Q = k(k̂_f − ẑ) from first principles: the pixel's position on the arm R₊y(δ)·R₋x(γ), columns
    along +x, rows along −y, the sample frame rotated back by the rocking angle about +y."""
    k = 2 * np.pi * g["energy_kev"] / geo.HC_KEV_NM
    arm = rotation("y", g["delta_deg"]) @ rotation("x", -g["gamma_deg"])
    rows, cols = shape[1:]

    def q(frame, row, col):
        pixel = np.array([(col - cols / 2) * g["pixel_m"], -(row - rows / 2) * g["pixel_m"], g["distance_m"]])
        kf = k * arm @ pixel / np.linalg.norm(pixel)
        return rotation("y", -frame * g["rocking_step_deg"]) @ (kf - np.array([0, 0, k]))

    f, r, c = peak
    base = q(0, r, c)
    return np.stack([q(1, r, c) - base, q(0, r + 1, c) - base, q(0, r, c + 1) - base], axis=1), base


def test_voxel_matrix_matches_an_independent_derivation():
    shape, peak = (64, 256, 256), (32, 127, 128)
    steps, q_peak = geo.reciprocal_steps(SCAN54, shape, peak)
    expected, q_expected = independent_steps(SCAN54, shape, peak)
    voxels, reference = geo.voxel_matrix(steps, (64, 64, 64)), geo.voxel_matrix(expected, (64, 64, 64))
    assert np.abs(voxels - reference).max() < 1e-3 * np.abs(reference).max()
    assert np.allclose(q_peak, q_expected, rtol=1e-6)
    lengths = np.linalg.norm(voxels, axis=0)
    assert lengths == pytest.approx([47.5, 20.1, 20.2], abs=0.15)  # the 34-ID-C scan-54 numbers
    unit = voxels / lengths
    frames_rows, frames_cols = (np.degrees(np.arccos(abs(unit[:, 0] @ unit[:, i]))) for i in (1, 2))
    assert 76 < frames_rows < 78 and 75 < frames_cols < 77


@pytest.fixture(scope="module")
def strained_sphere(tmp_path_factory):
    """A 150 nm sphere (cut flat below, like a particle on its substrate: a whole sphere with an even
    phase stalls phase retrieval between its twins) with u = a·s² along Ĝ, sampled on the detector
    grid of scan 54 at 0.01° steps and passed through the exact forward model."""
    folder = tmp_path_factory.mktemp("sphere")
    geometry = {**SCAN54, "rocking_step_deg": 0.01, "detector_shape": [256, 256], "detector_roi": [96, 96]}
    radius, a = 150.0, 2e-6
    intensity, _ = sphere_in_geometry(geometry, 64, strain=a, cut=0.75, radius_nm=radius)
    np.save(folder / "sphere.npy", intensity)
    (folder / "geometry.json").write_text(json.dumps(geometry))
    result = cli("reconstruct", folder / "sphere.npy", "--refine", "--geometry", folder / "geometry.json",
                 "--out", folder / "out.h5", "--vti", folder / "out.vti")
    assert result.returncode == 0, result.stderr
    return folder, geometry, a, radius


def test_strained_sphere_comes_back_in_the_lab_frame(strained_sphere):
    folder, geometry, a, radius = strained_sphere
    with h5py.File(folder / "out.h5") as f:
        lab = f["lab"]
        amplitude, strain = lab["amplitude"][()], lab["strain"][()]
        spacing, direction = lab.attrs["voxel_nm"], lab.attrs["bragg_direction"]
        assert [str(x) for x in lab.attrs["axes"]] == ["x", "y", "z"]
        assert "displacement" in lab and "phase" in lab
    assert np.allclose(spacing, spacing[0])
    shape = amplitude > 0.5
    points = (np.argwhere(shape) - np.argwhere(shape).mean(axis=0)) * spacing[0]
    moments = np.linalg.eigvalsh(points.T @ points / len(points))
    assert np.sqrt(moments[-1] / moments[0]) < 1.12  # a sphere, not the ellipsoid of the sheared grid
    in_plane = np.sqrt(5 * np.mean(points[:, [0, 2]] ** 2, axis=0))  # the cut is along y
    assert in_plane == pytest.approx([radius, radius], rel=0.08)
    inner = ndi.binary_erosion(amplitude > 0.3, iterations=2)
    where = (np.argwhere(inner) - np.argwhere(inner).mean(axis=0)) * spacing[0]
    fit, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(where)), where]), strain[inner], rcond=None)
    gradient = fit[1:]  # the twin flips the sign of the strain: BCDI cannot tell, the size and direction can
    assert np.linalg.norm(gradient) == pytest.approx(2 * a, rel=0.2)
    assert np.degrees(np.arccos(abs(gradient @ direction) / np.linalg.norm(gradient))) < 8
    arm = independent_steps(geometry, (64, 256, 256), (32, 128, 128))[1]  # unit Q from δ and γ alone
    assert np.degrees(np.arccos(np.clip(direction @ arm / np.linalg.norm(arm), -1, 1))) < 2
    vti = (folder / "out.vti").read_text()
    assert f'Spacing="{float(spacing[0])}' in vti and 'Name="strain"' in vti


def test_spec_file_gives_the_geometry():
    geometry = geometry_from_spec(real_file(realdata.scan54_spec()), 54)
    assert geometry["delta_deg"] == pytest.approx(32.174) and geometry["gamma_deg"] == pytest.approx(12.6346)
    assert geometry["distance_m"] == pytest.approx(0.5) and geometry["energy_kev"] == pytest.approx(9.0)
    assert geometry["rocking_step_deg"] == pytest.approx(0.005, rel=1e-4) and geometry["pixel_m"] == 55e-6
    assert geometry["rocking_motor"] == "th" and geometry["theta0_deg"] == pytest.approx(-0.279996)
    with pytest.raises(InputError, match="no scan 7"):
        geometry_from_spec(real_file(realdata.scan54_spec()), 7)


@pytest.mark.parametrize("content, message", [
    ({"energy_kev": 9.0, "distance_m": 0.5, "pixel_m": 55e-6, "rocking_step_deg": 0.005, "gamma_deg": 1.0},
     "geometry lacks delta_deg"),
    ({**SCAN54, "beamline": "nowhere"}, "unknown beamline"),
    ([1, 2], "JSON object"),
])
def test_bad_geometry_is_one_line(tmp_path, content, message):
    np.save(tmp_path / "in.npy", np.ones((40, 40, 40), np.float32))
    (tmp_path / "g.json").write_text(json.dumps(content))
    result = cli("reconstruct", "in.npy", "--out", "o.h5", "--geometry", "g.json", cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_spec_without_scan_is_one_line(tmp_path):
    np.save(tmp_path / "in.npy", np.ones((40, 40, 40), np.float32))
    result = cli("reconstruct", "in.npy", "--out", "o.h5", "--spec", str(real_file(realdata.scan54_spec())),
                 cwd=tmp_path)
    assert result.returncode == 2 and "--scan" in result.stderr
