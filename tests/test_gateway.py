"""The gateway over real HTTP (uvicorn) with real Redis: listing, downloads, strain, auth, limits, live events."""

import io
import json
import threading
import time
import uuid
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
import requests

from services.beamline.sim import GEOMETRY_34IDC, Beamline
from shared.wire import realdata
from shared.physics import crystals
from tests.conftest import API_KEY, scan_state, wait_for


def push(service, name, geometry=None, rate=0.0, index=0):
    intensity = crystals.simulated_scan(32, 4242, index, index, True, (1e8, 1e8))[0]
    volume = np.round(intensity).astype(np.uint32)
    scan = f"{name}-{uuid.uuid4().hex[:6]}"
    beamline = Beamline(service["zmq"])
    beamline.play(scan, volume, rate_hz=rate, geometry=geometry)
    beamline.close()
    return scan, volume


@pytest.fixture(scope="module")
def finished(service):
    """Two complete, refined scans: one with geometry, one without."""
    with_geometry, volume = push(service, "geo", GEOMETRY_34IDC)
    without, _ = push(service, "plain", index=1)
    for scan in (with_geometry, without):
        wait_for(lambda scan=scan: (s := scan_state(service, scan)) and "refined" in s["results"])
    return {"geometry": with_geometry, "plain": without, "volume": volume}


def get(service, path, **params):
    return requests.get(f"{service['base']}{path}", params=params, timeout=30)


def test_list_is_newest_first_paginated_and_filtered(service, finished):
    page = get(service, "/api/scans", limit=100).json()
    names = [s["scan"] for s in page["scans"]]
    assert names.index(finished["plain"]) < names.index(finished["geometry"])  # pushed later, listed first
    assert page["total"] >= 2
    one = get(service, "/api/scans", limit=1, offset=1).json()
    assert one["scans"][0]["scan"] == names[1] and one["limit"] == 1
    complete = get(service, "/api/scans", state="complete", limit=100).json()
    assert all(s["state"] == "complete" for s in complete["scans"])
    for bad in ({"limit": 0}, {"limit": 1000}, {"offset": -1}, {"state": "exploded"}):
        assert get(service, "/api/scans", **bad).status_code == 422


def test_reconstruction_in_every_format(service, finished):
    scan = finished["geometry"]
    base = f"/api/scans/{scan}/reconstruction"
    npz = np.load(io.BytesIO(get(service, base, stage="refined", format="npz").content))
    assert npz["amplitude"].dtype == np.float32 and npz["amplitude"].shape == npz["phase"].shape
    assert np.all(npz["voxel_nm"] > 1)  # physical voxel sizes from the geometry, nm
    with h5py.File(io.BytesIO(get(service, base, stage="refined", format="h5").content)) as f:
        assert np.allclose(f["amplitude"][()], npz["amplitude"]) and f.attrs["stage"] == "refined"
    with h5py.File(io.BytesIO(get(service, base, stage="nn", format="cxi").content)) as f:
        assert f["entry_1/image_1/data"].dtype == np.complex64
    vti = ET.fromstring(get(service, base, format="vti").content)
    assert vti.tag == "VTKFile" and {a.get("Name") for a in vti.iter("DataArray")} == {"amplitude", "phase"}
    assert get(service, base, format="tiff").status_code == 422


def test_strain_needs_geometry(service, finished):
    response = get(service, f"/api/scans/{finished['geometry']}/strain", stage="refined")
    assert response.status_code == 200
    arrays = np.load(io.BytesIO(response.content))
    inside = arrays["support"] > 0
    assert inside.any() and np.isfinite(arrays["strain"]).all()
    assert np.abs(arrays["strain"][inside]).max() < 0.05  # a relaxed simulated crystal: strain ≪ 5 %
    assert np.all(arrays["strain"][~inside] == 0)
    vti = get(service, f"/api/scans/{finished['geometry']}/strain", format="vti")
    assert vti.ok and b"displacement_nm" in vti.content
    missing = get(service, f"/api/scans/{finished['plain']}/strain")
    assert missing.status_code == 409 and "geometry" in missing.json()["detail"]


def test_raw_frames_are_the_pushed_frames(service, finished):
    response = get(service, f"/api/scans/{finished['geometry']}/frames")
    assert response.ok
    with h5py.File(io.BytesIO(response.content)) as f:
        assert np.array_equal(f["frames"][()], finished["volume"]) and f["received"][()].all()
    assert get(service, "/api/scans/..%2F..%2Fetc/frames").status_code in (404, 422)


def test_page_view_payload(service, finished):
    view = get(service, f"/api/scans/{finished['plain']}/view", stage="refined").json()
    mesh = view["mesh"]
    assert len(mesh["x"]) == len(mesh["phase"]) > 100 and len(mesh["i"]) > 100
    assert len(view["amplitude"]) == 3 and len(view["phase"]) == 3


def test_mutations_need_an_api_key(service, finished):
    scan = finished["plain"]
    stream = f"{service['prefix']}:jobs:refine"
    jobs_before = service["redis"].xlen(stream)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = requests.post(f"{service['base']}/api/scans/{scan}/refine", json={"steps": 20}, headers=headers)
        assert r.status_code == 401
        r = requests.delete(f"{service['base']}/api/scans/{scan}", headers=headers)
        assert r.status_code == 401
    assert service["redis"].xlen(stream) == jobs_before and scan_state(service, scan) is not None
    auth = {"Authorization": f"Bearer {API_KEY}"}
    bad = requests.post(f"{service['base']}/api/scans/{scan}/refine", json={"steps": 10**9}, headers=auth)
    assert bad.status_code == 422
    huge = requests.post(f"{service['base']}/api/scans/{scan}/refine", data=b"x" * 200_000, headers=auth)
    assert huge.status_code == 413
    old = scan_state(service, scan)["results"]["refined"]
    r = requests.post(f"{service['base']}/api/scans/{scan}/refine", json={"steps": 30, "loss": "poisson"},
                      headers=auth)
    assert r.status_code == 202
    wait_for(lambda: scan_state(service, scan)["results"]["refined"] != old)
    assert requests.delete(f"{service['base']}/api/scans/{scan}", headers=auth).status_code == 204
    assert get(service, f"/api/scans/{scan}").status_code == 404
    assert API_KEY not in service["log"].read_text()  # no secrets in the services' logs


def test_health_ready_metrics_docs(service, finished):
    assert get(service, "/health").json() == {"status": "ok"}
    ready = wait_for(lambda: (r := get(service, "/ready")).ok and r.json())
    assert ready["workers"]["infer"] >= 1 and ready["workers"]["refine"] >= 1
    text = get(service, "/metrics").text
    for metric in ("cdi_frames_in_total", "cdi_messages_rejected_total", "cdi_queue_length{queue=\"infer\"}",
                   "cdi_job_latency_seconds_count{stage=\"nn\"}", "cdi_results_total{stage=\"refined\"}"):
        assert metric in text
    paths = get(service, "/openapi.json").json()["paths"]
    assert {"/api/scans", "/api/scans/{scan}", "/api/scans/{scan}/strain", "/api/scans/{scan}/events"} <= set(paths)


def test_live_events_of_one_scan(service):
    scan = f"live-{uuid.uuid4().hex[:6]}"
    events = []

    def listen():
        with requests.get(f"{service['base']}/api/scans/{scan}/events", stream=True, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["event"] == "result" and events[-1]["stage"] == "refined":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(1.0)  # subscribed before the scan starts
    intensity = crystals.simulated_scan(32, 4242, 9, 9, True, (1e8, 1e8))[0]
    beamline = Beamline(service["zmq"])
    beamline.play(scan, np.round(intensity).astype(np.uint32), rate_hz=16)
    beamline.close()
    listener.join(120)
    kinds = [e["event"] for e in events]
    assert "progress" in kinds and "complete" in kinds and kinds[-1] == "result"
    assert all(e["scan"] == scan for e in events)
    assert kinds.index("progress") < kinds.index("complete")


def test_beamline_sim_sends_the_spec_geometry_and_downloads_are_in_the_lab(service, tmp_path):
    """`beamline-sim --spec scan54.spec --scan 54` puts the SPEC file's geometry in the start message;
    the reconstruction download is then on the orthonormal lab grid and says so."""
    from tests.conftest import real_file
    from tests.test_cli import cli

    spec = real_file(realdata.scan54_spec())
    intensity = crystals.simulated_scan(32, 4242, 5, 5, True, (1e8, 1e8))[0]
    np.savez(tmp_path / "recorded.npz", frames=np.round(intensity).astype(np.uint32))
    result = cli("beamline-sim", "--scans", "0", "--file", tmp_path / "recorded.npz", "--spec", spec, "--scan", "54",
                 "--endpoint", service["zmq"], "--rate", "0")
    assert result.returncode == 0, result.stderr
    scan = wait_for(lambda: next((s["scan"] for s in requests.get(f"{service['base']}/api/scans", timeout=5).json()
                                  ["scans"] if s["scan"].startswith("recorded-")), None))
    record = wait_for(lambda: (s := scan_state(service, scan)) and "refined" in s["results"] and s)
    assert record["geometry"]["delta_deg"] == pytest.approx(32.174) and record["geometry"]["rocking_motor"] == "th"
    response = get(service, f"/api/scans/{scan}/reconstruction", stage="refined", format="h5")
    with h5py.File(io.BytesIO(response.content)) as f:
        assert f.attrs["frame"] == "lab" and json.loads(f.attrs["axes"]) == ["x", "y", "z"]
        assert np.allclose(f.attrs["voxel_nm"], f.attrs["voxel_nm"][0])  # orthonormal
        assert np.linalg.norm(f.attrs["bragg_direction"]) == pytest.approx(1.0)
    view = get(service, f"/api/scans/{scan}/view", stage="refined").json()
    assert len(view["strain"]) == 3 and view["strain_range"] > 0 and view["voxel_nm"] > 1


def test_refined_results_carry_a_verdict_a_floor_and_an_uncertainty_map(service):
    """results.refined.verdict and chi_floor in the API, the same as in the stage's file; every download
    format carries the phase uncertainty (on the lab grid with a geometry); the page's view has its slices."""
    scans = [push(service, "trust-geo", GEOMETRY_34IDC, index=2)[0], push(service, "trust", index=3)[0]]
    for scan in scans:
        wait_for(lambda scan=scan: (s := scan_state(service, scan)) and "refined" in s["results"])
    for scan in scans:
        refined = scan_state(service, scan)["results"]["refined"]
        assert refined["verdict"] in ("converged", "uncertain") and refined["chi_floor"] > 0  # counts: a floor
        with h5py.File(f"{service['data_dir']}/{scan}/refined.h5") as f:
            assert f.attrs["verdict"] == refined["verdict"] and f.attrs["chi_floor"] == pytest.approx(refined["chi_floor"])
            assert f.attrs["chi_floor_fitted"] == pytest.approx(refined["chi_floor_fitted"])
            assert refined["chi_floor_fitted"] < refined["chi_floor"]
            assert f.attrs["chi_free"] == pytest.approx(refined["chi_free"]) and refined["chi_free_floor"] > 0
            assert f.attrs["verdict_reason"] == (refined["verdict_reason"] or "")
            assert f["phase_uncertainty"].shape == f["phase"].shape
        base = f"/api/scans/{scan}/reconstruction"
        npz = np.load(io.BytesIO(get(service, base, stage="refined", format="npz").content))
        assert npz["phase_uncertainty"].shape == npz["phase"].shape and npz["phase_uncertainty"].max() >= 0
        with h5py.File(io.BytesIO(get(service, base, stage="refined", format="h5").content)) as f:
            assert "phase_uncertainty" in f and f.attrs["verdict"] == refined["verdict"]
        assert "phase_uncertainty" in get(service, base, stage="refined", format="vti").text
        view = get(service, f"/api/scans/{scan}/view", stage="refined").json()
        assert len(view["uncertainty"]) == 3 and view["verdict"] == refined["verdict"]
        assert "phase_uncertainty" not in np.load(io.BytesIO(get(service, base, stage="nn", format="npz").content))
