"""Each scan belongs to a proposal; readers see only their own (issue 35).

A real gateway (`cdi-live gateway`, uvicorn) with ACCESS_FILE and OIDC (a JWKS file of an RSA key made
here) over real Redis; scans of two proposals taken through the real ingest, their results stored
through the store. Every route of the OpenAPI schema is walked with keys of both proposals, a key of
no proposal, and none: another proposal's scan answers 404 exactly as an unknown one."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import redis
import requests

from services.cli.up import wait_until_answering
from shared.physics.errors import InputError
from tests.conftest import REDIS_URL, free_port, ingest_running

ISSUER, AUDIENCE = "https://sso.example-facility.org/realms/users", "cdi-live"
KEYS = {"alice": "key-alice-" + uuid.uuid4().hex, "bob": "key-bob-" + uuid.uuid4().hex,
        "nobody": "key-nobody-" + uuid.uuid4().hex, "staff": "key-staff-" + uuid.uuid4().hex,
        "beam": "key-beamline-" + uuid.uuid4().hex}
GEOMETRY = {"energy_kev": 9.0, "distance_m": 0.5, "pixel_m": 55e-6, "rocking_step_deg": 0.01, "delta_deg": 32.174,
            "gamma_deg": 12.6346}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def rsa_key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048), \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)  # the issuer's, and a forger's


def token(private, **claims):
    import jwt

    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "carol", "exp": now + 300, "iat": now, "proposals": ["P-ALPHA"],
            **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, private, algorithm="RS256",
                      headers={"kid": "k1"})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, rsa_key):
    import jwt

    from services.beamline.sim import Beamline
    from shared.state.settings import Settings
    from shared.state.store import Store

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (.ci/run starts one)")
    folder = tmp_path_factory.mktemp("access")
    prefix, data = f"acc{uuid.uuid4().hex[:8]}", folder / "data"
    access = {sha(KEYS["alice"]): {"name": "alice", "role": "reader", "proposals": ["P-ALPHA"]},
              sha(KEYS["bob"]): {"name": "bob", "role": "reader", "proposals": ["P-BETA"]},
              sha(KEYS["nobody"]): {"name": "nobody", "role": "reader", "proposals": []},
              sha(KEYS["staff"]): {"name": "sam", "role": "staff", "proposals": []},
              sha(KEYS["beam"]): {"name": "34idc-daq", "role": "beamline", "proposals": ["P-ALPHA"]}}
    (folder / "access.json").write_text(json.dumps(access))
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key[0].public_key()))
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}))

    # two scans of each proposal through the real ingest, and results for each through the store
    zport = free_port()
    settings = Settings(key_prefix=prefix, data_dir=data, ingest_bind=f"tcp://127.0.0.1:{zport}",
                        default_proposal="P-DEFAULT")
    store = Store(settings)
    scans = {"P-ALPHA": f"alpha-{uuid.uuid4().hex[:6]}", "P-BETA": f"beta-{uuid.uuid4().hex[:6]}"}
    volume = np.random.default_rng(0).poisson(30, (8, 16, 16)).astype(np.uint32)

    def send():
        beamline = Beamline(settings.ingest_bind)
        for proposal, scan in scans.items():
            beamline.send({"type": "start", "scan": scan, "frames": 8, "shape": [16, 16], "dtype": "uint32",
                           "geometry": GEOMETRY, "proposal": proposal})
            for k in range(8):
                beamline.send({"type": "frame", "scan": scan, "index": k}, volume[k].tobytes())
            beamline.send({"type": "end", "scan": scan})
        beamline.close()
        for _ in range(200):
            if all((store.scan(s) or {}).get("state") == "complete" for s in scans.values()):
                return
            time.sleep(0.05)
        raise AssertionError("scans did not complete")

    ingest_running(settings, send)
    amplitude = np.zeros((8, 8, 8), np.float32)
    amplitude[2:6, 2:6, 2:6] = 1
    for scan in scans.values():
        for stage in ("nn", "refined"):
            store.put_result(scan, stage, amplitude, amplitude * 0.1, {"chi": 0.1, "seq": 1, "frames_used": 8, "seconds": 0.1,
                                                                        "crop": [8, 8, 8]})
    port = free_port()
    env = {**os.environ, "KEY_PREFIX": prefix, "DATA_DIR": str(data), "REDIS_URL": REDIS_URL,
           "ACCESS_FILE": str(folder / "access.json"), "OIDC_ISSUER": ISSUER, "OIDC_AUDIENCE": AUDIENCE,
           "OIDC_JWKS": str(folder / "jwks.json"), "DEFAULT_PROPOSAL": "P-DEFAULT"}
    log = (folder / "gateway.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "gateway", "--port", str(port)], env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base, process)
    except InputError as exc:
        process.kill()
        pytest.fail(f"{exc}: " + (folder / "gateway.log").read_text()[-2000:])
    yield {"base": base, "scans": scans, "store": store, "data": data, "prefix": prefix, "rsa": rsa_key,
           "log": folder / "gateway.log"}
    os.killpg(process.pid, signal.SIGINT)
    process.wait(20)
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def auth(who: str | None) -> dict:
    return {"Authorization": f"Bearer {KEYS[who]}"} if who else {}


def concrete_reads(base: str, scan: str) -> list[str]:
    """Every GET route of the OpenAPI schema, with ``scan`` for its path parameter."""
    schema = requests.get(f"{base}/openapi.json", timeout=5).json()
    paths = []
    for path, methods in schema["paths"].items():
        if "get" in methods:
            paths.append(path.replace("{scan}", scan))
    return paths


def test_every_route_leaks_nothing_across_proposals(gateway):
    base, scans = gateway["base"], gateway["scans"]
    mine = {"alice": scans["P-ALPHA"], "bob": scans["P-BETA"]}
    data_routes = 0
    for who, own in mine.items():
        other = next(s for s in scans.values() if s != own)
        for path in concrete_reads(base, other):
            if other not in path:
                continue
            data_routes += 1
            response = requests.get(base + path, headers=auth(who), timeout=30)
            unknown = requests.get(base + path.replace(other, "no-such-scan"), headers=auth(who), timeout=30)
            assert response.status_code == 404 and unknown.status_code == 404, (who, path, response.status_code)
            assert response.json()["detail"].replace(other, "X") == unknown.json()["detail"].replace("no-such-scan", "X")
            if path.endswith("/events"):
                continue
            own_response = requests.get(base + path.replace(other, own), headers=auth(who), timeout=30)
            assert own_response.status_code in (200, 409, 422), (who, path, own_response.status_code)
            assert other.encode() not in own_response.content
        listing = requests.get(f"{base}/api/scans", headers=auth(who), timeout=5).json()
        assert [s["scan"] for s in listing["scans"]] == [own] and listing["total"] == 1
        assert listing["scans"][0]["proposal"] in ("P-ALPHA", "P-BETA")
    assert data_routes >= 7  # detail, reconstruction, strain, frames, detector, view, events
    staff = requests.get(f"{base}/api/scans", headers=auth("staff"), timeout=5).json()
    assert {s["scan"] for s in staff["scans"]} == set(scans.values())
    nobody = requests.get(f"{base}/api/scans", headers=auth("nobody"), timeout=5).json()
    assert nobody["scans"] == [] and nobody["total"] == 0


def test_reads_without_credentials_are_refused(gateway):
    base, scan = gateway["base"], gateway["scans"]["P-ALPHA"]
    for path in concrete_reads(base, scan):
        if path.startswith("/api/") and path not in ("/api/access", "/api/queue", "/api/storage"):  # aggregates
            response = requests.get(base + path, timeout=10)
            assert response.status_code == 401, (path, response.status_code)
            assert response.headers.get("WWW-Authenticate") == "Bearer"
    for aggregate in ("/metrics", "/api/queue", "/api/storage"):  # open for Prometheus and KEDA: no scan ids
        response = requests.get(base + aggregate, timeout=5)
        assert response.status_code == 200 and all(s not in response.text for s in gateway["scans"].values())
    assert requests.get(f"{base}/api/access", timeout=5).json() == {
        "open": False, "mode": "access control", "who": None, "role": None, "proposals": None, "reads_all": False}


def test_oidc_tokens_are_verified(gateway):
    base, (issuer, forger) = gateway["base"], gateway["rsa"]
    scans = gateway["scans"]
    good = token(issuer)
    listing = requests.get(f"{base}/api/scans", headers={"Authorization": f"Bearer {good}"}, timeout=5)
    assert listing.status_code == 200 and [s["scan"] for s in listing.json()["scans"]] == [scans["P-ALPHA"]]
    other = requests.get(f"{base}/api/scans/{scans['P-BETA']}", headers={"Authorization": f"Bearer {good}"}, timeout=5)
    assert other.status_code == 404
    for bad in (token(forger), token(issuer, exp=int(time.time()) - 60), token(issuer, aud="another-service"),
                token(issuer, iss="https://evil.example.org"), token(issuer, exp=None), good[:-4] + "AAAA"):
        response = requests.get(f"{base}/api/scans", headers={"Authorization": f"Bearer {bad}"}, timeout=5)
        assert response.status_code == 401, response.text
    staff = token(issuer, cdi_live_role="staff", proposals=[])
    everyone = requests.get(f"{base}/api/scans", headers={"Authorization": f"Bearer {staff}"}, timeout=5).json()
    assert {s["scan"] for s in everyone["scans"]} == set(scans.values())


def test_writes_need_a_writer_of_that_proposal(gateway):
    base, scans = gateway["base"], gateway["scans"]
    alpha, beta = scans["P-ALPHA"], scans["P-BETA"]
    assert requests.post(f"{base}/api/scans/{alpha}/refine", json={"steps": 5}, headers=auth("alice"),
                         timeout=5).status_code == 403  # a reader
    assert requests.post(f"{base}/api/scans/{beta}/refine", json={"steps": 5}, headers=auth("beam"),
                         timeout=5).status_code == 404  # another proposal's
    cookie = requests.post(f"{base}/api/scans/{alpha}/refine", json={"steps": 5},
                           cookies={"cdi_live_key": KEYS["beam"]}, timeout=5)
    assert cookie.status_code == 401  # the page's cookie reads; it never writes
    assert requests.post(f"{base}/api/scans/{alpha}/refine", json={"steps": 5}, headers=auth("beam"),
                         timeout=5).status_code == 202


def test_event_stream_of_one_proposal_never_names_the_others(gateway):
    base, scans, store = gateway["base"], gateway["scans"], gateway["store"]
    seen: dict[str, list] = {"alice": [], "staff": []}

    def listen(who):
        with requests.get(f"{base}/api/events", headers=auth(who), stream=True, timeout=30) as response:
            assert response.status_code == 200
            deadline = time.time() + 8
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    seen[who].append(json.loads(line[6:]))
                if time.time() > deadline or len(seen[who]) >= 6:
                    break

    threads = [threading.Thread(target=listen, args=(who,)) for who in seen]
    for t in threads:
        t.start()
    time.sleep(1.0)
    for _ in range(2):
        for scan in scans.values():
            store.publish({"event": "progress", "scan": scan, "frames_received": 8})
        store.publish({"event": "rejected", "reason": "malformed header"})
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert {e.get("scan") for e in seen["alice"]} == {scans["P-ALPHA"]}
    assert scans["P-BETA"] in {e.get("scan") for e in seen["staff"]}


def test_the_proposal_is_in_every_file_and_reads_are_audited(gateway):
    import h5py

    data, scans = gateway["data"], gateway["scans"]
    for proposal, scan in scans.items():
        with h5py.File(data / scan / "frames.h5") as f:
            assert json.loads(f.attrs["start"])["proposal"] == proposal
        for stage in ("nn", "refined"):
            with h5py.File(data / scan / f"{stage}.h5") as f:
                assert f.attrs["proposal"] == proposal
    requests.get(f"{gateway['base']}/api/scans/{scans['P-ALPHA']}/frames", headers=auth("alice"), timeout=5)
    lines = [json.loads(line) for line in (data / "audit" / "reads.jsonl").read_text().splitlines()]
    assert {"who": "alice", "role": "reader", "scan": scans["P-ALPHA"], "what": "frames", "status": 200}.items() <= \
        lines[-1].items() and lines[-1]["time"] > time.time() - 60
    assert all(KEYS["alice"] not in line for line in (data / "audit" / "reads.jsonl").read_text().splitlines())
    assert KEYS["alice"] not in gateway["log"].read_text()


def test_a_broken_access_file_is_one_line(tmp_path):
    (tmp_path / "access.json").write_text(json.dumps({"not-a-digest": {"name": "x", "role": "reader"}}))
    result = subprocess.run([sys.executable, "-m", "services.cli.main", "gateway", "--data-dir", str(tmp_path)],
                            env={**os.environ, "ACCESS_FILE": str(tmp_path / "access.json")}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "SHA-256 hex digests" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_open_gateway_serves_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ACCESS_FILE", "OIDC_ISSUER")}
    refused = subprocess.run([sys.executable, "-m", "services.cli.main", "gateway", "--host", "0.0.0.0",
                              "--data-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no access control" in refused.stderr and "--insecure" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    refused = subprocess.run([sys.executable, "-m", "services.cli.main", "up", "--host", "10.1.2.3",
                              "--data-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no access control" in refused.stderr
