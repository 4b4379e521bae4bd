"""Receiving, apart from storing: a process that only takes whole messages off the detector's stream.

The receiver reads each multipart message from the stream (PULL, bound to the ingest address or
connected to a DECTRIS detector) without looking inside it, and hands it over whole to the storing
process through a ring of shared memory (``handover``): one copy, a few µs of Python a message. No
GIL is shared with the storing process, so a slow HDF5 write or a Redis round trip never holds the
detector's socket. Validation, decoding, the ROI, compression, HDF5 and Redis are the storing
process's (``service.Ingest``).

When the ring is full, messages queue in the receiver up to INGEST_HWM, then ZeroMQ pushes back on
the sender: nothing accepted is dropped, and memory is bounded.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import zmq

from services.ingest import handover


def part_address(address: str, part: int) -> str:
    """Receiver ``part``'s own address when several bind one native stream: the next ports
    (tcp://host:5555 → 5556, …) or a suffixed ipc path; part 0 keeps the address."""
    if part == 0:
        return address
    if address.startswith("tcp://") and address.rsplit(":", 1)[-1].isdigit():
        host, port = address.rsplit(":", 1)
        return f"{host}:{int(port) + part}"
    return f"{address}-{part}"


def handover_hwm(hwm: int) -> int:
    """Messages on their way from the receiver to the storing process: the queue is the receiver's."""
    return max(100, hwm // 10)


def die_with_parent() -> None:
    """Linux: this process is killed when the ingest that started it dies, even by SIGKILL, so the stream's
    address is never left held by an orphan."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died while this one was starting
        os._exit(0)


BURST = 1000  # messages taken off the stream between looks at the control socket


def receive(frontend: str, bind: bool, ring: str, notes: str, control: str, hwm: int, max_bytes: int) -> None:
    """The receiver's whole life: stream → ring → storing process, until the control socket says TERMINATE."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the ingest's to handle
    context = zmq.Context()
    stream = context.socket(zmq.PULL)
    stream.setsockopt(zmq.RCVHWM, hwm)
    stream.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    storer = context.socket(zmq.PUSH)
    storer.setsockopt(zmq.SNDHWM, handover_hwm(hwm))
    storer.connect(notes)
    steer = context.socket(zmq.PAIR)
    steer.connect(control)
    try:
        (stream.bind if bind else stream.connect)(frontend)
    except zmq.ZMQError as exc:
        steer.send(f"cannot {'bind' if bind else 'connect to'} {frontend}: {exc}".encode())
        return
    stopping = []

    def told_to_stop() -> bool:
        if not stopping and steer.poll(0):
            stopping.append(steer.recv())
        return bool(stopping)

    writer = handover.Writer(Path(ring), storer, told_to_stop)
    steer.send(b"ready")
    poller = zmq.Poller()
    poller.register(stream, zmq.POLLIN)
    poller.register(steer, zmq.POLLIN)
    try:
        while not told_to_stop():
            if stream not in dict(poller.poll(200)):
                continue
            for _ in range(BURST):
                try:
                    parts = stream.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                writer.send_multipart(parts)
        # a graceful stop hands over what this process already holds (its queue, at most ``hwm`` messages),
        # inline past a full ring: nothing accepted is dropped
        writer.overflow = True
        for _ in range(hwm):
            try:
                writer.send_multipart(stream.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break
    finally:
        stream.close(linger=0)
        storer.close(linger=2000)  # what was handed over reaches the storing process
        steer.close(linger=0)
        writer.ring.close()
        context.term()


def pva_monitor(pva: dict, ring: str, notes: str, control: str, hwm: int, reports: str) -> None:
    """The pvAccess receiver's whole life: pvapy's monitor threads translate each NTNDArray update to native
    messages and hand them to the storing process; once a second, scans ended by idleness go the same way,
    and rejections and loss counters go to ``reports`` (JSON). Until the control socket says TERMINATE."""
    from services.ingest.pva import PvaSource, PvaTranslator, loopback_defaults

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loopback_defaults()
    context = zmq.Context()
    storer = context.socket(zmq.PUSH)
    storer.setsockopt(zmq.SNDHWM, hwm)
    storer.connect(notes)
    report = context.socket(zmq.PUSH)
    report.connect(reports)
    steer = context.socket(zmq.PAIR)
    steer.connect(control)
    rejected: list[str] = []
    lock = threading.Lock()  # the reasons list, appended to from pvapy's threads
    options = {k: v for k, v in pva.items() if k != "channel"}

    def reject(reason: str) -> None:
        with lock:
            rejected.append(reason)

    try:
        writer = handover.Writer(Path(ring), storer, overflow=True)  # a pvAccess server drops, never waits
        source = PvaSource(pva["channel"], PvaTranslator(**options), writer.send_multipart, reject)
    except Exception as exc:
        steer.send(f"cannot subscribe to pvAccess channel {pva['channel']}: {exc}".encode())
        return
    steer.send(b"ready")
    try:
        while not (steer.poll(1000) and steer.recv() == b"TERMINATE"):
            ended, lost = source.poll()
            with source.lock:  # the ring is the monitor threads' too
                for message in ended:
                    writer.send_multipart(message)
            with lock:
                reasons, rejected[:] = list(rejected), []
            if reasons or lost:
                report.send(json.dumps({"rejected": reasons, "counters": lost}).encode())
    finally:
        source.close()
        with source.lock:
            ended, lost = source.poll()
            for message in ended:
                writer.send_multipart(message)
        writer.ring.close()
        for socket in (storer, report, steer):
            socket.close(linger=2000)  # what was handed over reaches the storing process
        context.term()


class Receiver:
    """The receiving process of one ingest and the storing process's end of its hand-over: a loop over a
    ZeroMQ stream, or (``pva``) pvapy's monitor of an areaDetector channel. ``socket`` is for polling;
    :meth:`recv_multipart` gives the next message (its parts where they lie in the ring), :meth:`release`
    gives its room back once it is handled."""

    def __init__(self, context: zmq.Context, frontend: str | None, bind: bool, scratch: Path, hwm: int,
                 max_bytes: int, pva: dict | None = None, ring_mb: int = 128):
        name = f"cdi-live-recv-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.socket = context.socket(zmq.PULL)  # the storing process's end
        self.socket.setsockopt(zmq.RCVHWM, handover_hwm(hwm))
        notes = f"ipc://{scratch / name}"
        self.socket.bind(notes)
        self.control = context.socket(zmq.PAIR)
        control = f"ipc://{scratch / name}-control"
        self.control.bind(control)
        ring = scratch / f"cdi-live-ring-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        handover.create(ring, ring_mb << 20)
        self.reader = handover.Reader(ring, self.socket)
        self.paths = [scratch / name, scratch / f"{name}-control", ring]
        self.reports = None
        if pva is not None:  # rejections and loss counters of the monitor
            self.reports = context.socket(zmq.PULL)
            self.reports.bind(f"ipc://{scratch / name}-reports")
            self.paths.append(scratch / f"{name}-reports")
            self.target, self.args = pva_monitor, (pva, str(ring), notes, control, hwm,
                                                   f"ipc://{scratch / name}-reports")
        else:
            self.target, self.args = receive, (frontend, bind, str(ring), notes, control, hwm, max_bytes)
        self.start()

    def recv_multipart(self) -> list:
        return self.reader.recv_multipart()

    def release(self) -> None:
        """The message last received is handled: its room in the ring is free."""
        self.reader.release()

    def start(self) -> None:
        spawn = multiprocessing.get_context("spawn")  # a fork would copy the ingest's threads and sockets
        self.process = spawn.Process(target=self.target, args=self.args, name="cdi-live-receiver", daemon=True)
        self.process.start()
        answer = b"the receiving process exited"
        for _ in range(600):  # its start is the interpreter's (spawned), about a second
            if self.control.poll(100):
                answer = self.control.recv()
                break
            if not self.process.is_alive():
                break
        if answer != b"ready":
            self.close()
            self.close_socket()
            raise RuntimeError(answer.decode())

    def reported(self) -> list[dict]:
        """What a pvAccess receiver reported since the last call: rejection reasons and loss counters."""
        out = []
        while self.reports is not None and self.reports.poll(0):
            out.append(json.loads(self.reports.recv()))
        return out

    def restart_if_dead(self) -> bool:
        """A receiving process that died (killed, out of memory) is replaced; True if it was."""
        if self.process.is_alive():
            return False
        self.start()
        return True

    def close(self, handle=None, wait_s: float = 30.0) -> None:
        """Stop receiving (the stream's address is free again); messages already handed over stay readable.
        ``handle(parts)``, where given, is called with each message handed over, until none is left: those in
        the ring and those the receiving process hands over while it stops (what it had received: with a full
        ring it cannot finish until they are read)."""
        if self.process.is_alive():
            try:
                self.control.send(b"TERMINATE", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            deadline = time.monotonic() + (wait_s if handle is not None else 5.0)
            while self.process.is_alive() and time.monotonic() < deadline:
                if handle is not None and self.socket.poll(50):
                    handle(self.recv_multipart())
                    self.release()
                else:
                    self.process.join(0.05)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        while handle is not None and self.socket.poll(200):
            handle(self.recv_multipart())
            self.release()
        self.control.close(linger=0)

    def close_socket(self) -> None:
        self.reader.close()
        self.socket.close(linger=0)
        if self.reports is not None:
            self.reports.close(linger=0)
        for path in self.paths:
            path.unlink(missing_ok=True)
