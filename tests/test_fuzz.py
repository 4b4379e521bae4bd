"""Hostile input against the running ingest: every bad message is rejected and counted, nothing crashes,
and valid scans acquired at the same time come out bit-identical on disk."""

import json
import time
import random
import uuid

import h5py
import numpy as np
import pydantic
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from services.beamline.sim import Beamline
from services.ingest.service import Rejected, decode_frame
from shared.wire.messages import Frame, Start, parse_header
from tests.conftest import scan_state, wait_for
from tests.fuzzing import attack

MESSAGES = 3000


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_any_header_bytes_parse_or_fail_cleanly(raw):
    try:
        parse_header(raw)
    except pydantic.ValidationError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.sampled_from(["raw", "lz4", "bslz4"]), st.sampled_from(["uint16", "float32"]))
def test_any_payload_decodes_or_is_rejected(payload, encoding, dtype):
    start = Start(type="start", scan="s", frames=2, shape=(16, 16), dtype=dtype)
    try:
        frame = decode_frame(Frame(type="frame", scan="s", index=0, encoding=encoding), payload, start, 4096)
        assert frame.shape == (16, 16) and frame.dtype == np.dtype(dtype)
    except Rejected:
        pass


def counters(service):
    raw = service["redis"].hgetall(f"{service['prefix']}:metrics")
    return {k.decode(): float(v) for k, v in raw.items()}


def test_fuzzing_the_live_ingest(service):
    rng = random.Random(2026)
    victims = {f"fz-u32-{uuid.uuid4().hex[:6]}": (32, (32, 32), "uint32"),
               f"fz-f32-{uuid.uuid4().hex[:6]}": (32, (32, 32), "float32")}
    volumes = {name: (np.random.default_rng(i).poisson(50, (32, 32, 32)).astype(dtype))
               for i, (name, (_, _, dtype)) in enumerate(victims.items())}
    starter = Beamline(service["zmq"])
    for name, volume in volumes.items():
        starter.send({"type": "start", "scan": name, "frames": 32, "shape": [32, 32], "dtype": str(volume.dtype)})
    starter.close()
    wait_for(lambda: all(scan_state(service, n) for n in victims), timeout=30)
    before = counters(service)
    expected, valid = attack(service["zmq"], victims, volumes, MESSAGES,
                             lambda: counters(service).get("rejected", 0) - before.get("rejected", 0), rng)
    assert all(scan_state(service, name)["state"] == "acquiring" for name in victims)  # the attack closed none
    for name in victims:
        valid.send({"type": "end", "scan": name})
    valid.close()
    for name in victims:
        state = wait_for(lambda name=name: (s := scan_state(service, name)) and s["state"] == "complete" and s)
        assert state["frames_received"] == 32 and state["missing"] == 0 and state["duplicates"] == 0
    after = wait_for(lambda: (c := counters(service)).get("rejected", 0) - before.get("rejected", 0) >= expected and c,
                     timeout=60)
    assert after["rejected"] - before.get("rejected", 0) == expected
    assert "rejected:internal error" not in after
    for name, volume in volumes.items():  # accepted data, bit for bit
        raw_file = json.loads(service["redis"].hget(f"{service['prefix']}:scan:{name}", "raw_file"))
        with h5py.File(raw_file) as f:
            assert np.array_equal(f["frames"][()], volume) and f["received"][()].all()
    assert requests.get(f"{service['base']}/health", timeout=5).ok
    metrics = requests.get(f"{service['base']}/metrics", timeout=5).text
    assert 'cdi_messages_rejected_total{reason="malformed header (json_invalid)"}' in metrics
    ingests = service["redis"].zrangebyscore(f"{service['prefix']}:workers:ingest", time.time() - 15, "+inf")
    assert ingests, "the ingest is alive (fresh heartbeat)"
