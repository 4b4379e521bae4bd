"""Receiving, apart from storing: a process that only takes whole messages off the detector's stream.

The receiver is ZeroMQ's own proxy (``zmq.proxy``, a loop in C): it reads each multipart message
from the stream (PULL, bound to the ingest address or connected to a DECTRIS detector) and passes
it on whole, without copying it in Python or looking inside, to the storing process over an
``ipc://`` socket. No Python runs per frame here, and no GIL is shared with the storing process,
so a slow HDF5 write or a Redis round trip never holds the detector's socket. Validation,
decoding, the ROI, compression, HDF5 and Redis are the storing process's (``service.Ingest``).

Messages queue in the receiver up to INGEST_HWM (and a tenth of it on the way to the storing process),
then ZeroMQ pushes back on the sender: nothing accepted is dropped, and memory is bounded.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import threading
import uuid
from pathlib import Path

import zmq


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
        pass


def proxy(frontend: str, bind: bool, backend: str, control: str, hwm: int, max_bytes: int) -> None:
    """The receiver's whole life: stream → storing process, until the control socket says TERMINATE."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the ingest's to handle
    context = zmq.Context()
    stream = context.socket(zmq.PULL)
    stream.setsockopt(zmq.RCVHWM, hwm)
    stream.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    storer = context.socket(zmq.PUSH)
    storer.setsockopt(zmq.SNDHWM, handover_hwm(hwm))
    storer.connect(backend)
    steer = context.socket(zmq.PAIR)
    steer.connect(control)
    try:
        (stream.bind if bind else stream.connect)(frontend)
    except zmq.ZMQError as exc:
        steer.send(f"cannot {'bind' if bind else 'connect to'} {frontend}: {exc}".encode())
        return
    steer.send(b"ready")
    try:
        zmq.proxy_steerable(stream, storer, None, steer)
    except zmq.ContextTerminated:
        pass
    finally:
        for socket in (stream, storer, steer):
            socket.close(linger=0)
        context.term()


def pva_monitor(pva: dict, backend: str, control: str, hwm: int, reports: str) -> None:
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
    storer.connect(backend)
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
        source = PvaSource(pva["channel"], PvaTranslator(**options), storer.send_multipart, reject)
    except Exception as exc:
        steer.send(f"cannot subscribe to pvAccess channel {pva['channel']}: {exc}".encode())
        return
    steer.send(b"ready")
    try:
        while not (steer.poll(1000) and steer.recv() == b"TERMINATE"):
            ended, lost = source.poll()
            with source.lock:  # the data socket is the monitor threads' too
                for message in ended:
                    storer.send_multipart(message)
            with lock:
                reasons, rejected[:] = list(rejected), []
            if reasons or lost:
                report.send(json.dumps({"rejected": reasons, "counters": lost}).encode())
    finally:
        source.close()
        with source.lock:
            ended, lost = source.poll()
            for message in ended:
                storer.send_multipart(message)
        for socket in (storer, report, steer):
            socket.close(linger=2000)  # what was handed over reaches the storing process
        context.term()


class Receiver:
    """The receiving process of one ingest and the socket the storing process reads it from: ZeroMQ's
    proxy for a ZeroMQ stream, or (``pva``) pvapy's monitor of an areaDetector channel."""

    def __init__(self, context: zmq.Context, frontend: str | None, bind: bool, scratch: Path, hwm: int,
                 max_bytes: int, pva: dict | None = None):
        name = f"cdi-live-recv-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.socket = context.socket(zmq.PULL)  # the storing process's end
        self.socket.setsockopt(zmq.RCVHWM, handover_hwm(hwm))
        backend = f"ipc://{scratch / name}"
        self.socket.bind(backend)
        self.control = context.socket(zmq.PAIR)
        control = f"ipc://{scratch / name}-control"
        self.control.bind(control)
        self.paths = [scratch / name, scratch / f"{name}-control"]
        self.reports = None
        if pva is not None:  # rejections and loss counters of the monitor
            self.reports = context.socket(zmq.PULL)
            self.reports.bind(f"ipc://{scratch / name}-reports")
            self.paths.append(scratch / f"{name}-reports")
            self.target, self.args = pva_monitor, (pva, backend, control, hwm, f"ipc://{scratch / name}-reports")
        else:
            self.target, self.args = proxy, (frontend, bind, backend, control, hwm, max_bytes)
        self.start()

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

    def close(self) -> None:
        """Stop receiving (the stream's address is free again); messages already handed over stay readable."""
        if self.process.is_alive():
            try:
                self.control.send(b"TERMINATE", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.control.close(linger=0)

    def close_socket(self) -> None:
        self.socket.close(linger=0)
        if self.reports is not None:
            self.reports.close(linger=0)
        for path in self.paths:
            path.unlink(missing_ok=True)
