"""Inference worker: micro-batches preview and final jobs across scans through 3D-CDI-NN.

A partial job is skipped when a newer job for the same scan is already known
(only the freshest preview is worth computing); final jobs are never skipped.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np

from services.worker.queue import JobQueue, run_forever
from shared.nn.inference import Predictor
from shared.physics import metrics
from shared.settings import Settings
from shared.store import Store

log = logging.getLogger("cdi-live.infer")


class InferenceWorker:
    def __init__(self, settings: Settings, predictor: Predictor | None = None, consumer: str | None = None):
        self.settings = settings
        self.store = Store(settings)
        self.queue = JobQueue(self.store.redis, self.store.keys.infer_jobs, "infer", settings.claim_idle_ms, consumer)
        self.predictor = predictor or Predictor(batch_size=settings.infer_batch)
        self.predictor.predict_magnitudes(np.zeros((1, 32, 32, 32), np.float32))  # build the graph before jobs come

    def step(self) -> int:
        jobs = self.queue.take(self.settings.infer_batch)
        if not jobs:
            return 0
        self.queue.ensure_group()
        latest: dict[str, dict] = {}
        skipped = []
        for job_id, fields in jobs:
            job = {k.decode(): v for k, v in fields.items()}
            scan, seq, final = job["scan"].decode(), int(job["seq"]), job["final"] == b"1"
            state = self.store.scan(scan) or {}
            newest = int(state.get("latest_seq", seq))
            if not final and (seq < newest or (scan in latest and latest[scan]["seq"] > seq)):
                skipped.append(job_id)
                continue
            if scan in latest and not latest[scan]["final"]:
                skipped.append(latest[scan]["id"])
            if scan not in latest or seq > latest[scan]["seq"] or final:
                latest[scan] = {"id": job_id, "seq": seq, "final": final, "job": job}
        if skipped:
            self.store.count("jobs_skipped_stale", len(skipped))
            self.queue.done(*skipped)
        work = list(latest.values())
        if work:
            self.run(work)
        return len(work)

    def run(self, work: list[dict]) -> None:
        inputs = np.stack([np.frombuffer(w["job"]["input"], "<f4").reshape(32, 32, 32) for w in work])
        started = time.perf_counter()
        amp, phase = self.predictor.predict_magnitudes(inputs)
        seconds = (time.perf_counter() - started) / len(work)
        for w, a, p, m in zip(work, amp, phase, inputs):
            job = w["job"]
            scan = job["scan"].decode()
            obj = a * np.exp(1j * p)
            chi = metrics.chi(obj, m**2)
            ca, cp, _ = metrics.canonical(obj)
            info = {"frames_used": int(job["frames_used"]), "chi": float(chi), "seconds": seconds, "seq": w["seq"],
                    "final": w["final"], "crop": json.loads(job["crop"]),
                    "latency": time.time() - float(job["queued"])}
            self.store.put_result(scan, "nn", ca, cp, info)
            self.store.count("results_nn")
            if w["final"]:
                self.store.redis.xadd(self.store.keys.refine_jobs, {"scan": scan, "queued": time.time()},
                                      maxlen=self.settings.stream_maxlen, approximate=True)
            self.queue.done(w["id"])


def serve(settings: Settings, stop: threading.Event | None = None, consumer: str | None = None) -> None:
    stop = stop or threading.Event()
    worker = InferenceWorker(settings, consumer=consumer)
    log.info("inference worker %s ready", worker.queue.consumer)
    run_forever(worker.step, stop, "infer")
