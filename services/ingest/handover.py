"""The hand-over from the receiving process to the storing process: whole messages through shared memory.

Each message is copied once, whole, into a ring of shared memory (a file in /dev/shm) by the receiving
process; a small note (where it lies, its parts' lengths) goes over an ``ipc://`` socket. The storing
process reads the parts where they lie (memoryviews: no copy) and, once it has handled a message, says so
by moving the ring's ``consumed`` mark; the receiver reuses that room. Passing the message itself through
an ``ipc://`` socket (ZeroMQ's proxy) cost 0.1–1 ms a 256² frame in kernel copies on this 2-core machine,
the ring 15 µs.

When the ring is full the receiver waits: messages then queue in its ZeroMQ socket up to INGEST_HWM and
ZeroMQ pushes back on the sender. Nothing accepted is dropped, and memory is bounded by the ring (taken
whole at the start) and the high-water mark. A message bigger than half the ring goes inline with its note,
and so does every message of a source that cannot wait (pvAccess) while the ring is full.

Layout: 64 bytes of header (``consumed``, then the writer's ``head``: absolute byte positions, each written
by one process only), then the ring. A message never wraps: it starts at 0 when it would not fit before the
ring's end, and the skipped tail counts as used. Each part starts on a 64-byte boundary.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

import numpy as np
import zmq

HEADER = 64
MADV_POPULATE_WRITE = 23  # Linux 5.14+: map every page now (the mmap module does not name it)
SMALL_PART = 65536  # parts up to this size are handed over as bytes (headers: JSON and pydantic want bytes)
INLINE = -1  # a note's position when the parts travel with it
ALIGN = 64
# a full ring is polled ever less often: each wake costs CPU that the storing process, which is behind, needs
WAIT_FIRST_S, WAIT_LONGEST_S = 0.0002, 0.002


def aligned(nbytes: int) -> int:
    """Room a part takes: each starts on a 64-byte boundary, so a frame read where it lies is an aligned
    array (numpy and bitshuffle take slow paths on unaligned ones)."""
    return -(-nbytes // ALIGN) * ALIGN


def create(path: Path, size: int) -> None:
    """A new ring file of ``size`` bytes (its pages are taken when a :class:`Ring` maps it)."""
    with open(path, "wb") as f:
        f.truncate(HEADER + size)


def note(start: int, end: int, lengths) -> bytes:
    """Where a message lies in the ring (``start``, and ``end`` as an absolute position; ``start`` INLINE: its
    parts follow the note) and its parts' lengths."""
    return struct.pack(f"<{2 + len(lengths)}q", start, end, *lengths)


def read_note(buffer) -> tuple[int, int, tuple[int, ...]]:
    fields = struct.unpack(f"<{len(buffer) // 8}q", buffer)
    return fields[0], fields[1], fields[2:]


class Ring:
    """One process's map of a ring file, every page mapped at once: a first touch per page while frames
    flow cost more than the copy itself (90 MB of Eiger-1M frames: ~40 ms of page faults)."""

    def __init__(self, path: Path):
        fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        try:
            self.map.madvise(MADV_POPULATE_WRITE)
        except (OSError, ValueError):  # an older kernel: pages are mapped as they are first written
            pass
        self.size = len(self.map) - HEADER
        self.view = memoryview(self.map)[HEADER:]
        self.marks = np.frombuffer(self.map, np.int64, 2, 0)  # consumed, head

    @property
    def consumed(self) -> int:
        return int(self.marks[0])

    @property
    def head(self) -> int:
        return int(self.marks[1])

    def lacks_room(self, head: int, nbytes: int) -> bool:
        """Would ``nbytes`` written at ``head`` overwrite what the storing process has not handled yet?"""
        return head + nbytes - self.consumed > self.size

    def close(self) -> None:
        self.view.release()
        del self.marks
        try:
            self.map.close()
        except BufferError:  # a part still referenced somewhere: the map goes with it
            pass


class Writer:
    """The receiving process's end: :meth:`send_multipart` copies a message into the ring and sends its note.
    A writer that replaces one that died resumes at the ring's ``head``."""

    def __init__(self, path: Path, notes: zmq.Socket, stop=lambda: False, overflow: bool = False):
        self.ring = Ring(path)
        self.notes = notes
        self.stop = stop  # polled while waiting for room: a receiver told to stop does not wait for it
        # a source that cannot be pushed back on (pvAccess: a server drops what its subscriber is slow to
        # take): when the ring is full, messages go inline, queued by ZeroMQ up to its high-water mark
        self.overflow = overflow

    def send_multipart(self, parts) -> None:
        lengths = [len(p) for p in parts]
        total = sum(aligned(n) for n in lengths)
        ring = self.ring
        head = ring.head
        start = head % ring.size
        if start + total > ring.size:  # no wrapping inside a message: the tail is skipped
            head += ring.size - start
            start = 0
        if total > ring.size // 2 or (self.overflow and ring.lacks_room(head, total)):
            self.notes.send_multipart([note(INLINE, 0, lengths), *parts])
            return
        pause = WAIT_FIRST_S
        while ring.lacks_room(head, total):  # full: the storing process is behind
            if self.stop():  # told to stop: this message goes inline rather than nowhere
                self.notes.send_multipart([note(INLINE, 0, lengths), *parts])
                return
            time.sleep(pause)
            pause = min(2 * pause, WAIT_LONGEST_S)
        at = start
        for part, n in zip(parts, lengths):
            ring.view[at:at + n] = part.buffer if isinstance(part, zmq.Frame) else part
            at += aligned(n)
        ring.marks[1] = head + total
        self.notes.send(note(start, head + total, lengths), copy=True)


class Reader:
    """The storing process's end: :meth:`recv_multipart` gives the next message's parts where they lie in the
    ring; :meth:`release` once it is handled gives its room back (messages are handled one at a time, in
    order; the next ``recv_multipart`` releases the one before in any case). Hold a message while waiting for
    the next and the writer may wait for its room: release first."""

    def __init__(self, path: Path, notes: zmq.Socket):
        self.ring = Ring(path)
        self.notes = notes
        self.handled = None  # the end of the last message given out

    def recv_multipart(self) -> list:
        self.release()
        where, *inline = self.notes.recv_multipart(copy=False)
        start, end, lengths = read_note(where.buffer)
        if start == INLINE:
            return [p.bytes if n <= SMALL_PART else p.buffer for p, n in zip(inline, lengths)]
        parts, at = [], start
        for n in lengths:
            view = self.ring.view[at:at + n]
            parts.append(bytes(view) if n <= SMALL_PART else view)
            at += aligned(n)
        self.handled = end
        return parts

    def release(self) -> None:
        """The last message given out is handled: its room is the receiver's again."""
        if self.handled is not None:
            self.ring.marks[0] = self.handled
            self.handled = None

    def close(self) -> None:
        self.release()
        self.ring.close()
