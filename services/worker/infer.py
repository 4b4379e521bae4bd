"""Inference worker: micro-batches preview and final jobs across scans through 3D-CDI-NN.

The network's prediction then seeds the refined plan without its AD polish on
its own 32³ input (``shared.solver.plans.PREVIEW_PLAN``: frames not yet taken left
free, χ_free withheld), warm-started from the scan's last preview when it was
made on the same crop; that is the ``nn`` stage operators see while the scan is
taken, marked ``partial`` until every frame is in. Until the frames pass the rocking
curve's peak the stage shows the network's own answer instead (``plans.preview_shown``,
``shown``: "network"), and the preview it computed is kept in the stage's file
(``preview_real``, ``preview_imag``) to warm-start the next. A finished scan's job runs
``FINAL_NN_PLAN`` (one short run from the last preview): the refined stage is
queued right after it.

A partial job is skipped when a newer job for the same scan is already known
(only the freshest preview is worth computing); final jobs are never skipped.
A preview in progress is cut short when its scan's final job arrives: the scan
has ended, and its final answer (and the refined stage after it) must not wait.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import numpy as np

from services.worker.queue import JobQueue, run_forever, stream_id
from shared.solver import convergence
from shared.state import scheduling
from shared.nn.inference import Predictor
from shared.physics import downsample, kernels, metrics, phasing
from shared.solver.plans import FINAL_NN_PLAN, PREVIEW_PLAN, Preempted, converge, preview_shown
from shared.state.results import complex_datasets
from shared.state.settings import Settings
from shared.state.store import Store

log = logging.getLogger("cdi-live.infer")

FINAL_CHECK_S = 0.1  # how often a running preview asks whether its scan's final job has arrived (one Redis call)


class InferenceWorker:
    def __init__(self, settings: Settings, predictor: Predictor | None = None, consumer: str | None = None):
        self.settings = settings
        self.store = Store(settings)
        self.queue = JobQueue(self.store.redis, self.store.keys.infer_jobs, "infer", settings.claim_idle_ms, consumer,
                              settings.max_deliveries, self.store.keys.dead_letters, self.store.fail_job)
        self.predictor = predictor or Predictor(batch_size=settings.infer_batch)
        self.predictor.predict_magnitudes(np.zeros((1, 32, 32, 32), np.float32))  # build the graph before jobs come
        kernels.warm_up()  # and the previews' fused phasing loops
        self.criterion = dataclasses.replace(convergence.CRITERION, signal_left=settings.convergence_signal_left)

    def step(self) -> int:
        jobs = self.queue.take(self.settings.infer_batch)
        if not jobs:
            return 0
        chosen: dict[str, dict] = {}  # per scan: its final job if taken, else its newest preview
        skipped = []
        for job_id, fields in jobs:
            job = {k.decode(): v for k, v in fields.items()}
            entry = {"id": job_id, "seq": int(job["seq"]), "final": job["final"] == b"1", "job": job}
            scan = job["scan"].decode()
            best = chosen.get(scan)
            if best is None or (entry["final"], entry["seq"]) > (best["final"], best["seq"]):
                if best is not None:
                    skipped.append(best["id"])
                chosen[scan] = entry
            else:
                skipped.append(job_id)
        started = {}
        for scan, entry in list(chosen.items()):  # a preview older than the newest one queued is stale
            record = self.store.scan(scan) or {}
            if not entry["final"] and entry["seq"] < int(record.get("latest_seq", entry["seq"])):
                skipped.append(entry["id"])
                del chosen[scan]
            elif not entry["final"]:
                started[scan] = float(record.get("started") or 0.0)
        keep = set(scheduling.previews_to_run(started))  # the scan being taken now first (shared.state.scheduling)
        for scan in set(started) - keep:
            skipped.append(chosen.pop(scan)["id"])
        if skipped:
            self.store.count("jobs_skipped_stale", len(skipped))
            self.queue.done(*skipped)
        work = list(chosen.values())
        if work:
            self.run(work)
            self.store.count(f"jobs_done:{self.queue.consumer}", len(work))  # who did what (scale-out check)
        return len(work)

    def run(self, work: list[dict]) -> None:
        inputs = np.stack([np.frombuffer(w["job"]["input"], "<f4").reshape(32, 32, 32) for w in work])
        started = time.perf_counter()
        amp, phase = self.predictor.predict_magnitudes(inputs)
        network_seconds = (time.perf_counter() - started) / len(work)
        records = [self.store.scan(w["job"]["scan"].decode()) or {} for w in work]  # one read per job
        measured = np.stack([self.measured(w["job"], r) for w, r in zip(work, records)])
        previous = [self.store.result(w["job"]["scan"].decode(), "nn") for w in work]  # the last result, read once
        computed = [self.last_preview(w["job"]["scan"].decode(), last) for w, last in zip(work, previous)]
        warm = [self.warm_start(w["job"], last, obj) for w, last, obj in zip(work, previous, computed)]
        objects, chi_free = np.empty(inputs.shape, np.complex64), np.empty(len(work))
        cut = set()
        for final, plan in ((False, PREVIEW_PLAN), (True, FINAL_NN_PLAN)):  # the refined stage follows a final
            rows = [k for k, w in enumerate(work) if w["final"] == final]
            if rows:
                try:
                    done = converge(inputs[rows]**2, (amp * np.exp(1j * phase))[rows], measured[rows], plan,
                                    warm=[warm[k] for k in rows],
                                    yield_now=None if final else self.final_arrived([work[k] for k in rows]))
                except Preempted:  # a scan of these previews ended: its final goes first
                    cut.update(rows)
                    continue
                objects[rows], chi_free[rows] = done.obj, done.chi_free
        if cut:
            self.store.count("previews_cut", len(cut))
            self.queue.done(*(work[k]["id"] for k in cut))
        seconds = (time.perf_counter() - started) / len(work)
        for k, (w, a, p, m, obj, mask, record, free, start, last, earlier) in enumerate(zip(
                work, amp, phase, inputs, objects, measured, records, chi_free, warm, previous, computed)):
            if k in cut:
                continue
            job = w["job"]
            scan = job["scan"].decode()
            shown, extra = "preview", None
            if not w["final"]:
                shown = preview_shown(m**2, mask[:, 0, 0])
            if shown == "network":  # before the peak: the network's answer is shown, the preview warm-starts the next
                extra = complex_datasets("preview", obj)
                obj = (a * np.exp(1j * p)).astype(np.complex64)
                free = metrics.chi(obj, m**2, mask & phasing.free_voxels(mask.shape))  # its χ on the withheld voxels
            ca, cp, _ = metrics.canonical(obj)
            info = {"frames_used": int(job["frames_used"]), "chi": metrics.chi(obj, m**2, mask), "shown": shown,
                    "chi_on": "32×32×32 network grid", "grid": [32, 32, 32],
                    "chi_network": metrics.chi(a * np.exp(1j * p), m**2, mask), "seconds": seconds,
                    "network_seconds": network_seconds, "seq": w["seq"], "final": w["final"],
                    "crop": json.loads(job["crop"]), "latency": time.time() - float(job["queued"]),
                    "chi_free": float(free), "partial": bool(mask[:, 0, 0].sum() < len(mask)),
                    "frames_expected": int(record.get("frames_expected") or job["frames_used"]),
                    "warm_start": start is not None}
            if not w["final"]:  # judged on the previews computed (``objects``), whichever was shown
                info["convergence"] = self.convergence(scan, record, m**2, mask[:, 0, 0], objects[k],
                                                       info["frames_used"], last, earlier)
            self.store.put_result(scan, "nn", ca, cp, info, extra=extra)
            self.store.count("results_nn")
            self.store.record_latency("nn", info["latency"])
            if w["final"]:
                self.store.queue_refinement(scan, record)
            self.queue.done(w["id"])

    def final_arrived(self, previews: list[dict]):
        """For ``converge``'s ``yield_now``: true once a final job of one of these previews' scans was queued
        after them (asked at most every ``FINAL_CHECK_S``)."""
        scans, newest = {w["job"]["scan"] for w in previews}, max((w["id"] for w in previews), key=stream_id)
        last = [time.monotonic()]

        def ask() -> bool:
            if time.monotonic() - last[0] < FINAL_CHECK_S:
                return False
            last[0] = time.monotonic()
            return any(fields.get(b"final") == b"1" and fields.get(b"scan") in scans
                       for _, fields in self.queue.queued_after(newest))

        return ask

    def convergence(self, scan: str, record: dict, intensity: np.ndarray, measured_samples: np.ndarray,
                    preview: np.ndarray, frames_used: int, previous, computed: np.ndarray | None) -> dict:
        """Ask ``shared.solver.convergence`` whether more frames would change this scan's answer (``previous``: its last
        stored result, or None; ``computed``: the preview it was computed from); the first time it says no, mark the
        record (``converged_at_frames``) and publish a ``converged`` event."""
        earlier = None
        if previous is not None and previous[2].get("frames_used", frames_used) < frames_used:
            earlier = computed
        verdict = convergence.decide(intensity, measured_samples, preview, earlier, self.criterion)
        fields = {"convergence": {"frames": frames_used, **verdict}}  # the latest verdict, for operators
        first = verdict["converged"] and record.get("converged_at_frames") is None and record.get("state") == "acquiring"
        if first:
            fields["converged_at_frames"] = frames_used
        self.store.update_scan(scan, **fields)
        if first:
            self.store.publish({"event": "converged", "scan": scan, "frames": frames_used,
                                "frames_expected": record.get("frames_expected"), **verdict})
            self.store.count("scans_converged_early")
            log.info("scan %s converged at %d of %s frames (signal left %.4f)", scan, frames_used,
                     record.get("frames_expected"), verdict["signal_left"])
        return verdict

    def last_preview(self, scan: str, previous) -> np.ndarray | None:
        """The preview last computed for this scan (``previous``: its stored result): the stage's own answer, or,
        where the network's was shown instead, the preview kept beside it in its file."""
        if previous is None:
            return None
        if previous[2].get("shown") == "network":
            kept = self.store.result_complex(scan, "nn", "preview")
            if kept is not None:
                return kept
        return (previous[0] * np.exp(1j * previous[1])).astype(np.complex64)

    @staticmethod
    def warm_start(job: dict, previous, computed: np.ndarray | None) -> np.ndarray | None:
        """The scan's last preview (``computed``, from ``previous`` as stored), to start the next one (or the final)
        from; None for the first, or after a preview made on another crop (its grid is not this one's)."""
        if previous is None or previous[2].get("crop") != json.loads(job["crop"]) or previous[0].shape != (32, 32, 32):
            return None
        return computed

    def measured(self, job: dict, record: dict) -> np.ndarray:
        """The network-grid voxels resting on frames already taken (all, for a complete scan)."""
        total, used = int(record.get("frames_expected", 0) or 0), int(job["frames_used"])
        crop_frames = json.loads(job["crop"])[0]
        frames = np.ones(32, bool) if not total or used >= total else downsample.measured_frames(total, used, crop_frames)
        return np.broadcast_to(frames[:, None, None], (32, 32, 32))


def serve(settings: Settings, stop: threading.Event | None = None, consumer: str | None = None) -> None:
    stop = stop or threading.Event()
    worker = InferenceWorker(settings, consumer=consumer)
    log.info("inference worker %s ready", worker.queue.consumer)
    run_forever(worker.step, stop, "infer", lambda: worker.store.heartbeat("infer", worker.queue.consumer))
    worker.store.farewell("infer", worker.queue.consumer)
