"""Hostile native-protocol messages for the ingest, each with the number of rejects it must cause.

Used by tests/test_fuzz.py (thousands) and benchmarks/fuzz_ingest.py (≥ 100,000). Nothing
here may alter a valid scan: messages aimed at the victims' ids are always invalid.
"""

from __future__ import annotations

import json
import random
import time
import uuid

import lz4.block
import numpy as np


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _garbage(rng: random.Random, lo: int = 0, hi: int = 200) -> bytes:
    return rng.randbytes(rng.randint(lo, hi))


def hostile_messages(rng: random.Random, victims: dict[str, tuple[int, tuple[int, int], str]]):
    """Endless (parts, expected rejects) pairs; ``victims``: scan id → (frames, shape, dtype) of valid scans."""
    names = list(victims)
    while True:
        kind = rng.randrange(15)
        victim = rng.choice(names)
        frames, shape, dtype = victims[victim]
        size = shape[0] * shape[1] * 4
        if kind == 0:  # random bytes, any number of parts
            yield [_garbage(rng, 0, 300) for _ in range(rng.randint(1, 3))], 1
        elif kind == 1:  # broken or non-object JSON
            yield [rng.choice([b'{"type":"start"', b"[1,2]", b'"frame"', b"null", b"42", b"{}", b"\xff\xfe{",
                               b'{"type":"frame","scan":"x","index":1', _j({"type": None})])], 1
        elif kind == 2:  # unknown type, protocol version, extra or missing fields
            yield [_j(rng.choice([{"type": "hello", "scan": victim}, {"type": "start", "scan": victim, "version": 2},
                                  {"type": "frame", "scan": victim}, {"type": "end"},
                                  {"type": "end", "scan": victim, "extra": 1},
                                  {"type": "frame", "scan": victim, "index": "3"}]))], 1
        elif kind == 3:  # start with impossible values
            bad = rng.choice([{"frames": 0}, {"frames": -5}, {"frames": 10**12}, {"shape": [0, 4]},
                              {"shape": [10**6, 10**6]}, {"shape": [4]}, {"shape": "32x32"},
                              {"dtype": "complex128"}, {"dtype": "<u4"}, {"scan": "../../etc"}, {"scan": ""},
                              {"scan": "x" * 100}, {"scan": "é"}, {"geometry": {"energy_kev": -1}}])
            yield [_j({"type": "start", "scan": f"f{uuid.uuid4().hex[:8]}", "frames": 4, "shape": [4, 4],
                       "dtype": "uint32", **bad})], 1
        elif kind == 4:  # a huge declared scan is accepted (memory is bounded by the ROI), ended, then a frame after
            huge = f"huge{uuid.uuid4().hex[:8]}"
            yield [_j({"type": "start", "scan": huge, "frames": 10000, "shape": [4096, 4096],
                       "dtype": rng.choice(["float32", "uint32"])})], 0
            yield [_j({"type": "end", "scan": huge})], 0
            yield [_j({"type": "frame", "scan": huge, "index": 0}), b"\0" * 4], 1
        elif kind == 5:  # start again for a scan that is acquiring, or with extra parts
            yield ([_j({"type": "start", "scan": victim, "frames": frames, "shape": list(shape), "dtype": dtype})]
                   + ([b"extra"] if rng.random() < 0.5 else [])), 1
        elif kind == 6:  # frame for an unknown scan
            yield [_j({"type": "frame", "scan": f"ghost{rng.randrange(10**6)}", "index": 0}), b"\0" * size], 1
        elif kind == 7:  # victim frame with the wrong payload size
            wrong = rng.choice([0, 1, size - 1, size + 1, size * 2, rng.randint(0, 3 * size)])
            wrong += wrong == size
            yield [_j({"type": "frame", "scan": victim, "index": rng.randrange(frames)}), _garbage(rng, wrong, wrong)], 1
        elif kind == 8:  # victim frame with a compressed-garbage payload
            encoding = rng.choice(["lz4", "bslz4"])
            payload = _garbage(rng, 0, 64) if rng.random() < 0.5 else lz4.block.compress(b"\1" * (size + 8))
            yield [_j({"type": "frame", "scan": victim, "index": rng.randrange(frames), "encoding": encoding}),
                   payload], 1
        elif kind == 9:  # index beyond the declared count, or a negative one
            index = rng.choice([frames, frames + 1, 9999, -1])
            yield [_j({"type": "frame", "scan": victim, "index": index}), b"\0" * size], 1
        elif kind == 10:  # frame without its data part, or with two
            yield [_j({"type": "frame", "scan": victim, "index": 0})] + [b"\0" * size] * rng.choice([0, 2]), 1
        elif kind == 11:  # NaN or inf in a float32 scan's frame
            float_victims = [v for v in names if victims[v][2] == "float32"]
            if not float_victims:
                continue
            name = rng.choice(float_victims)
            n, (h, w), _ = victims[name]
            frame = np.zeros((h, w), "<f4")
            frame.flat[rng.randrange(h * w)] = rng.choice([np.nan, np.inf, -np.inf])
            yield [_j({"type": "frame", "scan": name, "index": rng.randrange(n)}), frame.tobytes()], 1
        elif kind == 12:  # an empty scan, then frames after its end (the start and end are valid)
            ghost = f"ended{uuid.uuid4().hex[:8]}"
            yield [_j({"type": "start", "scan": ghost, "frames": 2, "shape": [2, 2], "dtype": "uint8"})], 0
            yield [_j({"type": "end", "scan": ghost})], 0
            yield [_j({"type": "frame", "scan": ghost, "index": 0}), b"\0" * 4], 1
        elif kind == 13:  # oversize header
            yield [b'{"type":"frame","scan":"' + b"x" * 70000 + b'"}'], 1
        else:  # end for an unknown scan
            yield [_j({"type": "end", "scan": f"nobody{rng.randrange(10**6)}"})], 1


def attack(endpoint: str, victims: dict, volumes: dict, messages: int, rejected_so_far, rng: random.Random,
           progress=None):
    """Send ``messages`` hostile messages with the victims' frames in between; returns
    (expected rejects, the valid sender) with every victim frame sent and no ``end`` yet.

    Each batch of valid frames waits until the ingest has counted the attack so far
    (``rejected_so_far()``), so the victims stay open through all of it.
    """
    from services.beamline.sim import Beamline

    valid, hostile = Beamline(endpoint), Beamline(endpoint)
    generator, expected, frame = hostile_messages(rng, victims), 0, 0
    frames = min(v[0] for v in victims.values())

    def settle():
        while rejected_so_far() < expected:
            time.sleep(0.02)

    for sent in range(1, messages + 1):
        parts, rejects = next(generator)
        hostile.socket.send_multipart(parts)
        expected += rejects
        if progress:
            progress(1)
        if sent % max(1, messages // (frames + 1)) == 0 and frame < frames:
            settle()
            for name, volume in volumes.items():
                valid.send({"type": "frame", "scan": name, "index": frame}, volume[frame].tobytes())
            frame += 1
    settle()
    hostile.close()
    for name, volume in volumes.items():
        for k in range(frame, frames):
            valid.send({"type": "frame", "scan": name, "index": k}, volume[k].tobytes())
    return expected, valid
