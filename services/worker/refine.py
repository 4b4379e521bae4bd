"""Refinement worker: AD refinement of the final NN result of each completed scan."""

from __future__ import annotations

import json
import logging
import threading
import time

import h5py
import hdf5plugin  # noqa: F401  (Bitshuffle-LZ4 frames)
import numpy as np

from services.worker.queue import JobQueue, run_forever
from shared.errors import InputError
from shared.physics import metrics
from shared.reconstruction import embed, refinement_data
from shared.refinement import refine
from shared.settings import Settings
from shared.store import Store

log = logging.getLogger("cdi-live.refine")


class RefinementWorker:
    def __init__(self, settings: Settings, consumer: str | None = None):
        self.settings = settings
        self.store = Store(settings)
        self.queue = JobQueue(self.store.redis, self.store.keys.refine_jobs, "refine", settings.claim_idle_ms, consumer,
                              settings.max_deliveries, self.store.keys.dead_letters, self.store.fail_job)

    def step(self) -> int:
        jobs = self.queue.take(1)
        for job_id, fields in jobs:
            scan = fields[b"scan"].decode()
            options = json.loads(fields.get(b"options", b"{}"))  # from POST /api/scans/{scan}/refine
            try:
                self.refine_scan(scan, **options)
                self.store.record_latency("refined", time.time() - float(fields.get(b"queued", time.time())))
            except (OSError, KeyError, ValueError, InputError) as exc:
                self.store.update_scan(scan, state="failed", reason=f"refinement: {exc}")
                self.store.count("jobs_failed")
                log.error("refinement of %s failed: %s", scan, exc)
            self.queue.done(job_id)
        return len(jobs)

    def refine_scan(self, scan: str, steps: int | None = None, time_budget: float | None = None,
                    loss: str = "gaussian") -> None:
        state = self.store.scan(scan)
        nn = self.store.result(scan, "nn")
        if state is None or nn is None:
            raise KeyError("scan or its NN result is gone")
        with h5py.File(state["raw_file"], "r") as f:
            volume = f["frames"][()].astype(np.float32)
        if min(volume.shape) < 32:
            volume = np.pad(volume, [(0, max(0, 32 - s)) for s in volume.shape])
        measured, crop = refinement_data(volume, self.settings.refine_size)
        amp, phase, info = nn
        start = embed(amp * np.exp(1j * phase), measured.shape)
        began = time.perf_counter()
        result = refine(measured[None], start[None], steps or self.settings.refine_steps, loss=loss,
                        time_budget=time_budget or self.settings.refine_time_budget)
        ra, rp, _ = metrics.canonical(result.obj[0])
        self.store.put_result(scan, "refined", ra, rp, {
            "frames_used": info["frames_used"], "chi": float(result.chi[0]), "chi_start": float(result.chi_start[0]),
            "seconds": time.perf_counter() - began, "steps": result.steps, "seq": info["seq"], "crop": list(crop),
            "loss": loss}, force=True)
        self.store.count("results_refined")


def serve(settings: Settings, stop: threading.Event | None = None, consumer: str | None = None) -> None:
    stop = stop or threading.Event()
    worker = RefinementWorker(settings, consumer)
    log.info("refinement worker %s ready", worker.queue.consumer)
    run_forever(worker.step, stop, "refine", lambda: worker.store.heartbeat("refine", worker.queue.consumer))
