"""Refinement worker: the refined stage (``shared.pipeline``) of each completed scan, seeded by its final NN result."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import h5py
import hdf5plugin  # noqa: F401  (Bitshuffle-LZ4 frames)
import numpy as np

from services.worker.queue import JobQueue, run_forever
from shared.errors import InputError
from shared.pipeline import REFINE_PLAN
from shared.reconstruction import refined_stage
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
            received = f["received"][()] if "received" in f else np.ones(len(volume), bool)
        rows = volume.shape
        volume = np.pad(volume, [(0, max(0, 32 - n)) for n in rows])
        measured = np.zeros(volume.shape, bool)  # frames that never arrived and padding are free, not zeros
        measured[:rows[0], :rows[1], :rows[2]] = received[:, None, None]
        measured = None if measured.all() else measured
        amp, phase, info = nn
        plan = dataclasses.replace(REFINE_PLAN, polish_steps=steps or self.settings.refine_steps,
                                   polish_loss=loss or REFINE_PLAN.polish_loss,
                                   polish_time_budget=time_budget or self.settings.refine_time_budget)
        crop = tuple(info.get("crop") or amp.shape)
        began = time.perf_counter()
        stage = refined_stage(volume[None], amp[None], phase[None], [crop], None if measured is None else measured[None],
                              self.settings.refine_size, plan, on_input_grid=False)  # ≤ refine_size³: Redis holds it
        extra = stage.info
        self.store.put_result(scan, "refined", stage.amplitude[0], stage.phase[0], {
            "frames_used": info["frames_used"], "chi": float(stage.chi[0]), "seconds": time.perf_counter() - began,
            "seq": info["seq"], "crop": extra["grid"], "voxel_grid": list(volume.shape), "nn_crop": list(crop),
            "loss": plan.polish_loss, "grid": extra["grid"],
            "downsampled": extra["downsampled"], "phase_ramp": extra["phase_ramp"],
            "bragg_peak_offset": extra["bragg_peak_offset"][0], "start": extra["start"][0], "plan": extra["plan"]},
            force=True)
        self.store.count("results_refined")


def serve(settings: Settings, stop: threading.Event | None = None, consumer: str | None = None) -> None:
    stop = stop or threading.Event()
    worker = RefinementWorker(settings, consumer)
    log.info("refinement worker %s ready", worker.queue.consumer)
    run_forever(worker.step, stop, "refine", lambda: worker.store.heartbeat("refine", worker.queue.consumer))
