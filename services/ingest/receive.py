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
import multiprocessing
import os
import signal
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


class Receiver:
    """The receiving process of one ingest and the socket the storing process reads it from."""

    def __init__(self, context: zmq.Context, frontend: str, bind: bool, scratch: Path, hwm: int, max_bytes: int):
        name = f"cdi-live-recv-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.socket = context.socket(zmq.PULL)  # the storing process's end
        self.socket.setsockopt(zmq.RCVHWM, handover_hwm(hwm))
        backend = f"ipc://{scratch / name}"
        self.socket.bind(backend)
        self.control = context.socket(zmq.PAIR)
        control = f"ipc://{scratch / name}-control"
        self.control.bind(control)
        self.paths = [scratch / name, scratch / f"{name}-control"]
        self.args = (frontend, bind, backend, control, hwm, max_bytes)
        self.start()

    def start(self) -> None:
        spawn = multiprocessing.get_context("spawn")  # a fork would copy the ingest's threads and sockets
        self.process = spawn.Process(target=proxy, args=self.args, name="cdi-live-receiver", daemon=True)
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
        for path in self.paths:
            path.unlink(missing_ok=True)
