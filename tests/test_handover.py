"""The hand-over from the receiving to the storing process: whole messages through a ring of shared memory,
with real processes and real ZeroMQ sockets."""

import hashlib
import multiprocessing
import os
import signal
import time

import numpy as np
import zmq

from services.ingest import handover
from services.ingest.receive import Receiver
from shared.state import scheduling
from tests.conftest import free_port

RING = 1 << 20


def messages(seed: int, count: int) -> list[list[bytes]]:
    """Messages of one to four parts, 0 B to 400 KB each (some bigger than half the ring: they go inline)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        sizes = rng.choice([0, 7, 300, 70_000, 200_000, 400_000, 700_000], size=rng.integers(1, 5),
                           p=[.05, .2, .2, .2, .2, .13, .02])
        out.append([rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes])
    return out


def write_all(ring: str, notes: str, seed: int, count: int) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.connect(notes)
    writer = handover.Writer(ring, socket)
    for message in messages(seed, count):
        writer.send_multipart(message)
    socket.close(linger=5000)
    context.term()


def digest(parts) -> str:
    return hashlib.sha256(b"|".join(bytes(p) + str(len(p)).encode() for p in parts)).hexdigest()


def test_messages_arrive_whole_and_in_order_through_a_ring_that_wraps_and_fills(tmp_path):
    """300 messages (about 90 MB) through a 1 MB ring, read by a storing side that is sometimes slow: the ring
    wraps and fills many times, the writer waits, and every part arrives bit-identical and in order."""
    ring, name = tmp_path / "ring", f"ipc://{tmp_path / 'notes'}"
    handover.create(ring, RING)
    context = zmq.Context()
    notes = context.socket(zmq.PULL)
    notes.bind(name)
    reader = handover.Reader(ring, notes)
    writer = multiprocessing.get_context("spawn").Process(target=write_all, args=(str(ring), name, 5, 300))
    writer.start()
    try:
        for k, expected in enumerate(messages(5, 300)):
            assert notes.poll(30_000), f"message {k} never came"
            parts = reader.recv_multipart()
            assert digest(parts) == digest(expected), f"message {k} differs"
            assert all(isinstance(p, bytes) for p, e in zip(parts, expected) if len(e) <= handover.SMALL_PART)
            reader.release()
            if k % 50 == 0:
                time.sleep(0.2)  # a slow HDF5 write: the ring fills and the writer waits
        assert reader.ring.head > 50 * RING  # it wrapped
        writer.join(30)
        assert writer.exitcode == 0
    finally:
        reader.close()
        notes.close(linger=0)
        context.term()


def test_a_receiving_process_that_is_killed_is_replaced_and_the_stream_goes_on(tmp_path):
    """SIGKILL the receiving process between messages: the storing side reads what was handed over, a new
    receiving process takes the stream from the same ring, and the next messages arrive whole."""
    port = free_port()
    context = zmq.Context()
    receiver = Receiver(context, f"tcp://127.0.0.1:{port}", True, tmp_path, 1000, 2**24, ring_mb=1)
    sender = context.socket(zmq.PUSH)
    sender.connect(f"tcp://127.0.0.1:{port}")
    try:
        def send_and_read(sent: list) -> None:
            for message in sent:
                sender.send_multipart(message)
            for k, expected in enumerate(sent):
                assert receiver.socket.poll(30_000), f"message {k} never came"
                assert digest(receiver.recv_multipart()) == digest(expected), f"message {k} differs"
                receiver.release()

        send_and_read(messages(11, 40))
        os.kill(receiver.process.pid, signal.SIGKILL)
        receiver.process.join(10)
        assert receiver.restart_if_dead()
        send_and_read(messages(12, 40))
    finally:
        sender.close(linger=0)
        receiver.close()
        receiver.close_socket()
        context.term()
    assert not any(tmp_path.glob("cdi-live-ring-*"))  # the ring's file goes with the ingest


def test_a_receiver_told_to_stop_with_a_full_ring_hands_over_everything_it_received(tmp_path):
    """The storing side reads nothing while 40 messages (about 6 MB) arrive at a receiver with a 1 MB ring: the
    ring fills, the receiving process holds one message and ZeroMQ queues the rest. Told to stop then, it hands
    every one over (inline past the full ring), whole and in order: a graceful stop drops nothing received."""
    port = free_port()
    context = zmq.Context()
    receiver = Receiver(context, f"tcp://127.0.0.1:{port}", True, tmp_path, 1000, 2**24, ring_mb=1)
    sender = context.socket(zmq.PUSH)
    sender.connect(f"tcp://127.0.0.1:{port}")
    sent, got = messages(13, 40), []
    try:
        for message in sent:
            sender.send_multipart(message)
        time.sleep(2)  # all of them reach the receiving process's queue; the ring is full long before

        receiver.close(lambda parts: got.append(digest(parts)))
        while receiver.socket.poll(200):
            got.append(digest(receiver.recv_multipart()))
            receiver.release()
        assert not receiver.process.is_alive()
        assert got == [digest(m) for m in sent]
    finally:
        sender.close(linger=0)
        receiver.close()
        receiver.close_socket()
        context.term()


def test_a_preview_is_asked_only_while_the_scan_has_time_left():
    ask = scheduling.preview_worth_asking
    assert ask(8, 32, 0.8, 0.5)  # 10 frames/s: 2.4 s to go
    assert not ask(28, 32, 2.8, 0.5)  # 0.4 s to go: the final comes first
    assert not ask(50, 200, 0.05, 0.5)  # 1 kHz: the whole scan lasts 0.2 s
    assert ask(50, 200, 0.05, 0)  # PREVIEW_MIN_LEFT_S 0: previews at any rate
    assert not ask(0, 200, 1.0, 0.5)
    # an ingest restarted 0.2 s ago found 100 frames in the file and got 2 more: 10 frames/s, 9.8 s to go
    assert ask(102, 200, 0.2, 0.5, frames_before=100)
    assert not ask(102, 200, 0.2, 0.5)  # (timed with the file's frames: 510 frames/s)


def test_previews_come_about_every_interval_of_acquisition_whatever_the_frame_rate():
    """The cadence is set in seconds, not in a share of the scan: the next scan's previews leave the cores to the
    refinement of the scan just ended, and a long, slow scan still shows something new every few frames."""
    every = scheduling.preview_every
    interval = scheduling.PREVIEW_INTERVAL_S
    assert every(10, 1.0) == round(10 * interval)  # 10 frames/s
    assert every(100, 1.0) == round(100 * interval)  # 100 frames/s: as many seconds apart
    assert every(3, 3.0) == scheduling.PREVIEW_MIN_FRAMES  # 1 frame/s: never fewer new frames than this
    assert every(0, 0.0) == scheduling.PREVIEW_MIN_FRAMES
    assert every(102, 0.2, frames_before=100) == round(10 * interval)  # timed from a restarted ingest's reopening
    assert interval <= 1.0  # issue 33: a preview at least every 2 s, with room for one to take ~0.3 s


def test_a_source_that_cannot_wait_overflows_inline_in_order(tmp_path):
    """pvAccess drops what a slow subscriber does not take: its writer never waits for room. With the ring
    full and nothing read yet, every message still goes (inline, queued by ZeroMQ), and all arrive in order."""
    ring, name = tmp_path / "ring", f"ipc://{tmp_path / 'notes'}"
    handover.create(ring, RING)
    context = zmq.Context()
    notes = context.socket(zmq.PULL)
    notes.bind(name)
    sender = context.socket(zmq.PUSH)
    sender.connect(name)
    reader = handover.Reader(ring, notes)
    writer = handover.Writer(ring, sender, overflow=True)
    try:
        sent = messages(21, 60)  # ~15 MB: 15 rings' worth
        began = time.monotonic()
        for message in sent:
            writer.send_multipart(message)
        assert time.monotonic() - began < 10  # it never waited for the reader
        for k, expected in enumerate(sent):
            assert notes.poll(10_000), f"message {k} never came"
            assert digest(reader.recv_multipart()) == digest(expected), f"message {k} differs"
            reader.release()
    finally:
        writer.ring.close()
        reader.close()
        sender.close(linger=0)
        notes.close(linger=0)
        context.term()


def test_the_ingests_helper_processes_die_with_it_even_when_it_is_killed(tmp_path):
    """SIGKILL an ingest (the OOM killer, a crashed node): its receiving and assembling processes go with it,
    rather than waiting for ever on pipes they hold both ends of (each was ~90 MB, and restarts piled them up)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "DATA_DIR": str(tmp_path), "KEY_PREFIX": f"orphan{os.getpid()}",
           "INGEST_BIND": f"tcp://127.0.0.1:{free_port()}"}
    ingest = subprocess.Popen([sys.executable, "-m", "services.cli.main", "ingest"], env=env,
                              stderr=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])

    def children() -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{ingest.pid}/task/{ingest.pid}/children").read_text().split()]
        except OSError:
            return []

    deadline = time.time() + 60
    while len(helpers := [c for c in children() if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]) < 2:
        assert time.time() < deadline, "the ingest never started its helpers"
        time.sleep(0.2)
    time.sleep(2)  # running, not starting (a helper whose ingest dies while it starts exits too)
    os.kill(ingest.pid, signal.SIGKILL)
    ingest.wait(10)
    deadline = time.time() + 10
    while any(Path(f"/proc/{c}").exists() and b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
              for c in helpers):
        assert time.time() < deadline, "a helper process outlived its ingest"
        time.sleep(0.2)
