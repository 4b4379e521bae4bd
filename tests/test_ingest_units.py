"""Ingest building blocks without the network: codecs, message validation, assembly."""

import json

import numpy as np
import pydantic
import pytest

from services.ingest.assembly import ScanAssembly
from shared.wire import codecs
from shared.wire.messages import Frame, Start, parse_header
from tests import conftest
from tests.conftest import require_redis


@pytest.fixture
def local_ingest(tmp_path):
    """An ``Ingest`` driven message by message in this thread (real Redis, private key prefix); closed,
    and its keys removed, afterwards. Call it with Settings fields."""
    import uuid


    from services.ingest.service import Ingest
    from shared.state.settings import Settings

    made = []

    def make(**fields):
        require_redis()
        made.append(Ingest(Settings(key_prefix=f"u{uuid.uuid4().hex[:8]}", data_dir=tmp_path, **fields)))
        return made[-1]

    yield make
    for ingest in made:
        ingest.close()
        for key in ingest.store.redis.scan_iter(f"{ingest.settings.key_prefix}:*"):
            ingest.store.redis.delete(key)


@pytest.mark.parametrize("encoding", ["raw", "lz4", "bslz4"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_codecs_round_trip(encoding, dtype):
    frame = np.random.default_rng(0).poisson(4, (37, 64)).astype(dtype)
    assert np.array_equal(codecs.decode(codecs.encode(frame, encoding), encoding, frame.shape, dtype), frame)


@pytest.mark.parametrize("encoding, payload", [("raw", b"123"), ("lz4", b"\xff" * 40), ("bslz4", b"\0" * 5),
                                               ("bslz4", b"\0" * 12 + b"junk"), ("zstd", b"")])
def test_bad_payloads(encoding, payload):
    with pytest.raises(codecs.CodecError):
        codecs.decode(payload, encoding, (8, 8), "uint32")


def test_messages():
    start = parse_header(json.dumps({"type": "start", "scan": "s1", "frames": 4, "shape": [2, 3],
                                     "dtype": "uint32", "geometry": {"energy_kev": 9, "distance_m": 0.5,
                                     "pixel_m": 5.5e-5, "rocking_step_deg": 0.005}}).encode())
    assert isinstance(start, Start) and start.geometry.hkl == (1, 1, 1)
    assert isinstance(parse_header(b'{"type":"frame","scan":"s1","index":3}'), Frame)
    for bad in [b"{", b'{"type":"start","scan":"../x","frames":4,"shape":[2,3],"dtype":"uint32"}',
                b'{"type":"start","scan":"s","frames":4,"shape":[2,3],"dtype":"complex64"}',
                b'{"type":"frame","scan":"s","index":-1}', b'{"type":"frame","scan":"s","index":1,"extra":1}',
                b'{"type":"stop","scan":"s"}', b'[1,2]']:
        with pytest.raises(pydantic.ValidationError):
            parse_header(bad)


def test_assembly_counts_and_partial_input(tmp_path):
    from services.ingest.assembly import network_input

    start = Start(type="start", scan="a", frames=32, shape=(32, 32), dtype="uint32")
    assembly = ScanAssembly(start, scratch=tmp_path)
    frame = np.ones((32, 32))
    for index in [0, 2, 1, 1, 5]:
        assembly.add(index, frame * index)
    assert assembly.count == 4 and assembly.duplicates == 1 and assembly.out_of_order == 1
    assert assembly.missing == 28
    net_in, crop = network_input(*assembly.input_request(final=False))
    assert net_in.shape == (32, 32, 32) and net_in.max() == pytest.approx(1.0)
    assert not net_in[16 + 6:].any()  # frames not yet acquired stay zero at the end
    assembly.release()
    assert not list(tmp_path.iterdir())


def test_memory_is_bounded_by_the_roi_and_gives_the_full_detector_input(tmp_path):
    """A 256² detector keeps only 128² per frame in memory, placed once the Bragg peak is clear (the frames
    before it are read back from the file), and the network input is the whole-detector path's."""
    import uuid

    from services.ingest.assembly import network_input, network_input_of
    from services.ingest.scanfile import ScanFile

    rng = np.random.default_rng(3)
    frames, side = 40, 256
    rows, cols = np.ogrid[:side, :side]
    spot = np.exp(-((rows - 150) ** 2 + (cols - 90) ** 2) / (2 * 2.5**2))
    volume = np.stack([np.round(3e3 * np.exp(-((k - 20) / 6) ** 2) * spot * (1 + 0.3 * np.sin(rows / 3 + k)))
                       for k in range(frames)]).astype(np.uint32)
    start = Start(type="start", scan=f"roi{uuid.uuid4().hex[:4]}", frames=frames, shape=(side, side), dtype="uint32")
    scan = ScanFile.create(start, tmp_path / "scan", {"scan": start.scan}, roi_px=128, scratch=tmp_path)
    for k in range(frames):
        scan.add(k, volume[k])
        if k == 2:
            assert not scan.assembly.placed  # a few faint frames: only summed, kept on disk
        if k == 12:
            assert scan.assembly.placed and scan.assembly.detector is None  # the peak is clear: ROI placed
    assert scan.assembly.volume.shape == (frames, 128, 128)
    net_in, crop, flags = network_input(*scan.assembly.input_request(final=True))
    whole_in, whole_crop = network_input_of(volume.astype(np.float32))
    assert crop == whole_crop and np.array_equal(net_in, whole_in) and flags == []
    scan.close()
    scan.assembly.release()


def test_bare_bitshuffle_images_as_alba_eiger_simulator_sends_them_get_the_hdf5_header():
    """ALBA's eiger-simulator (stream v1, ``bs16-lz4<``) sends bitshuffle's output without the HDF5 filter's
    12-byte header: it is put in front, so the frame is stored, read and decoded like a DECTRIS one."""
    import bitshuffle

    from services.ingest.dectris import DectrisTranslator

    frame = np.random.default_rng(4).poisson(2, (37, 53)).astype(np.uint16)
    bare = bitshuffle.compress_lz4(frame).tobytes()
    parts = [json.dumps({"htype": "dimage-1.0", "series": 3, "frame": 0}).encode(),
             json.dumps({"htype": "dimage_d-1.0", "shape": [53, 37], "encoding": "bs16-lz4<", "type": "uint16"}).encode(),
             bare]
    [(header, payload)] = DectrisTranslator().translate(parts)
    assert json.loads(header)["encoding"] == "bslz4" and payload[12:] == bare
    received = codecs.Received(payload, "bslz4", (37, 53), "uint16")
    assert np.array_equal(received.full(), frame) and np.array_equal(received.rows(5, 9), frame[5:9])
    with_header = codecs.encode(frame, "bslz4")  # one that has it is kept as it is
    assert codecs.with_bslz4_header(with_header, frame.nbytes) == with_header


def test_dectris_stream_over_zeromq(tmp_path):
    """A simulated DECTRIS detector binds PUSH; the ingest connects and assembles the series."""
    import threading
    import uuid

    import h5py

    from services.ingest.service import serve
    from shared.state.settings import Settings
    from shared.state.store import Store

    require_redis()
    from services.beamline.sim import DectrisDetector

    volume = np.random.default_rng(1).poisson(5, (6, 40, 48)).astype(np.uint32)
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    detector = DectrisDetector(f"tcp://127.0.0.1:{port}")
    settings = Settings(key_prefix=f"t{uuid.uuid4().hex[:8]}", data_dir=tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, stop), kwargs={"dectris": f"tcp://127.0.0.1:{port}"})
    thread.start()
    try:
        detector.play(7, volume)
        detector.socket.send_multipart([b'{"htype":"dimage-1.0","series":7,"frame":0}'])  # malformed: no data
        store = Store(settings)
        for _ in range(200):
            state = store.scan("series-7")
            if state and state["state"] == "complete":
                break
            threading.Event().wait(0.05)
        assert state["frames_received"] == 6 and state["state"] == "complete"
        with h5py.File(state["raw_file"]) as f:
            assert np.array_equal(f["frames"][()], volume)
    finally:
        stop.set()
        thread.join()
        detector.close(linger_ms=0)
        for key in Store(settings).redis.scan_iter(f"{settings.key_prefix}:*"):
            Store(settings).redis.delete(key)


def test_dectris_stream_v2_scan_is_bit_identical_on_disk_to_the_native_one(tmp_path):
    """The same scan sent as DECTRIS stream v2 (CBOR, bslz4; the ingest tells the version itself) and natively
    (bslz4) gives the same HDF5 chunks, byte for byte; v2's lz4 and uncompressed images give the same frames;
    the geometry (34-ID-C's, ID01's) rides in the start's user_data; a malformed CBOR message is counted, not fatal."""
    import threading
    import uuid

    import h5py

    from services.beamline.sim import GEOMETRY_34IDC, Beamline, DectrisDetector
    from shared.state.settings import Settings
    from shared.state.store import Store

    require_redis()

    def free_port():
        with __import__("socket").socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    volume = np.random.default_rng(2).poisson(40, (12, 48, 40)).astype(np.uint32)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = Store(Settings(key_prefix=prefix))

    def finished(scan):
        for _ in range(300):
            state = store.scan(scan)
            if state and state["state"] in ("complete", "failed"):
                return state
            threading.Event().wait(0.05)
        raise AssertionError(f"{scan} did not finish")

    def ingest_running(send, **kwargs):
        settings = Settings(key_prefix=prefix, data_dir=tmp_path / uuid.uuid4().hex[:6], **kwargs.pop("settings", {}))
        return conftest.ingest_running(settings, send, **kwargs)

    ID01 = {"beamline": "id01", "energy_kev": 8.0, "distance_m": 1.0, "pixel_m": 55e-6, "rocking_motor": "eta",
            "rocking_step_deg": 0.005, "angles_deg": {"mu": 0, "eta": 17.4, "phi": 0, "nu": 0.8, "delta": 34.9}}
    reason = "rejected:DECTRIS stream v2 message that is not a CBOR map with type and series_id"
    try:
        detector_at = f"tcp://127.0.0.1:{free_port()}"
        detector = DectrisDetector(detector_at, version=2)

        def send_v2():
            detector.play(7, volume, encoding="bslz4", geometry=GEOMETRY_34IDC)
            detector.play(8, volume, encoding="lz4", geometry=ID01, proposal="MA-6021")
            detector.play(9, volume, encoding="raw")
            detector.socket.send(b"\xa1\x64type\x65image")  # a CBOR map without series_id
            states = [finished(f"series-{n}") for n in (7, 8, 9)]
            for _ in range(100):
                if reason in store.counters():
                    break
                threading.Event().wait(0.05)
            return states

        v2, lz4_scan, raw_scan = ingest_running(send_v2, dectris=detector_at)
        detector.close(linger_ms=0)
        native_at = f"tcp://127.0.0.1:{free_port()}"

        def send_native():
            beamline = Beamline(native_at)
            beamline.play("native-7", volume, encoding="bslz4")
            beamline.close()
            return finished("native-7")

        native = ingest_running(send_native, settings={"ingest_bind": native_at})
        assert v2["frames_received"] == 12 and v2["geometry"]["delta_deg"] == GEOMETRY_34IDC["delta_deg"]
        assert lz4_scan["geometry"]["beamline"] == "id01" and lz4_scan["geometry"]["angles_deg"] == ID01["angles_deg"]
        assert lz4_scan["proposal"] == "MA-6021" and v2["proposal"] == "commissioning"  # user_data, else the default
        with h5py.File(v2["raw_file"]) as a, h5py.File(native["raw_file"]) as b:
            assert a["frames"].dtype == b["frames"].dtype == np.uint32
            for k in range(12):
                assert a["frames"].id.read_direct_chunk((k, 0, 0)) == b["frames"].id.read_direct_chunk((k, 0, 0))
            assert np.array_equal(a["frames"][()], volume)
        for state in (lz4_scan, raw_scan):
            with h5py.File(state["raw_file"]) as f:
                assert np.array_equal(f["frames"][()], volume)
        assert reason in store.counters() and "rejected:internal error" not in store.counters()
    finally:
        for key in store.redis.scan_iter(f"{prefix}:*"):
            store.redis.delete(key)


def test_back_pressure_skips_previews_never_final_jobs(local_ingest):
    """With a deep inference backlog, previews are skipped (counted) and the final job still goes out;
    workers trim only jobs every group has acknowledged."""
    from services.worker.queue import JobQueue

    ingest = local_ingest(stream_maxlen=8, preview_every=2, preview_min_left_s=0)  # previews at any rate
    client = ingest.store.redis
    queue = JobQueue(client, ingest.store.keys.infer_jobs, "infer")
    for i in range(10):  # a backlog no worker has taken
        client.xadd(ingest.store.keys.infer_jobs, {"scan": "old", "seq": i})
    ingest.handle([json.dumps({"type": "start", "scan": "bp", "frames": 8, "shape": [4, 4],
                               "dtype": "uint16"}).encode()])
    for k in range(8):
        ingest.handle([json.dumps({"type": "frame", "scan": "bp", "index": k}).encode(),
                       np.full((4, 4), k, "<u2").tobytes()])
    ingest.handle([b'{"type":"end","scan":"bp"}'])
    ingest.drain()  # the final input is computed beside the loop
    counters = ingest.store.counters()
    assert counters["previews_skipped_backpressure"] >= 3
    jobs = client.xrange(ingest.store.keys.infer_jobs)
    mine = [fields for _, fields in jobs if fields[b"scan"] == b"bp"]
    assert len(mine) == 1 and mine[0][b"final"] == b"1" and len(jobs) == 11  # nothing trimmed
    taken = queue.take(5, block_ms=10)
    queue.done(*[job_id for job_id, _ in taken[:3]])  # 3 done, 2 still pending
    queue.trim_acknowledged()
    remaining = [job_id for job_id, _ in client.xrange(ingest.store.keys.infer_jobs)]
    assert remaining[0] == taken[3][0] and len(remaining) == 8  # the pending and the undelivered stay


def test_a_scan_pushed_at_full_speed_gets_its_final_input_and_no_previews(local_ingest):
    """A 200-frame scan received in a fraction of a second: its previews would come after its final input, so
    none is asked (counted), and the final job goes out."""
    ingest = local_ingest(preview_every=8)
    name = "fast"
    ingest.handle([json.dumps({"type": "start", "scan": name, "frames": 200, "shape": [16, 16],
                               "dtype": "uint16"}).encode()])
    for k in range(200):
        ingest.handle([json.dumps({"type": "frame", "scan": name, "index": k}).encode(),
                       np.full((16, 16), k, "<u2").tobytes()])
    ingest.handle([json.dumps({"type": "end", "scan": name}).encode()])
    ingest.drain()
    jobs = [f for _, f in ingest.store.redis.xrange(ingest.store.keys.infer_jobs) if f[b"scan"] == name.encode()]
    assert [j[b"final"] for j in jobs] == [b"1"]
    assert ingest.store.counters()["previews_skipped_ending"] >= 20


def test_frames_keep_arriving_while_a_final_input_is_computed(local_ingest):
    """While the assembler is busy (a slow input ahead of a scan's final one), another scan's frames are
    received and counted; the final input is computed afterwards, never dropped."""
    import time

    ingest = local_ingest(preview_every=1000)
    start = lambda name, frames, side: [json.dumps({"type": "start", "scan": name, "frames": frames,  # noqa: E731
                                                    "shape": [side, side], "dtype": "uint16"}).encode()]
    frame = lambda name, k, data: [json.dumps({"type": "frame", "scan": name, "index": k}).encode(), data]  # noqa: E731
    rng = np.random.default_rng(0)
    ingest.handle(start("big", 48, 256))
    for k in range(48):
        ingest.handle(frame("big", k, rng.poisson(2.0, (256, 256)).astype("<u2").tobytes()))
    busy = ingest.assembler.submit(time.sleep, 1.5)  # a slow input computing ahead of this scan's final one
    ingest.handle([b'{"type":"end","scan":"big"}'])
    big_final = ingest.computing[-1][2]
    ingest.handle(start("next", 40, 16))
    for k in range(40):
        ingest.handle(frame("next", k, np.full((16, 16), k, "<u2").tobytes()))
    assert ingest.scans["next"].assembly.count == 40 and not busy.done() and not big_final.done()
    ingest.drain()
    jobs = ingest.store.redis.xrange(ingest.store.keys.infer_jobs)
    finals = [f for _, f in jobs if f[b"scan"] == b"big" and f[b"final"] == b"1"]
    assert len(finals) == 1 and len(finals[0][b"input"]) == 4 * 32**3


def test_a_large_detector_scan_that_ends_before_its_peak_is_clear_still_gets_its_final_input(local_ingest):
    """The ROI is placed from the file before it closes: a short, faint scan on a 256² detector (ROI never
    placed while frames came) ends with its final job, not an internal error."""
    ingest = local_ingest(preview_every=1000)
    ingest.handle([json.dumps({"type": "start", "scan": "faint", "frames": 40, "shape": [256, 256],
                               "dtype": "uint16"}).encode()])
    rng = np.random.default_rng(5)
    for k in range(5):
        ingest.handle([json.dumps({"type": "frame", "scan": "faint", "index": k}).encode(),
                       rng.poisson(0.1, (256, 256)).astype("<u2").tobytes()])
    assert not ingest.scans["faint"].assembly.placed
    ingest.handle([b'{"type":"end","scan":"faint"}'])
    ingest.drain()
    jobs = [f for _, f in ingest.store.redis.xrange(ingest.store.keys.infer_jobs) if f[b"scan"] == b"faint"]
    assert len(jobs) == 1 and jobs[0][b"final"] == b"1" and "internal error" not in ingest.store.counters()
