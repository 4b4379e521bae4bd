"""Refinement worker: the refined stage (``shared.solver.plans``) of each completed scan, seeded by its final NN
result, then, when the refined stage was binned, its full-grid stage (``shared.solver.fullgrid``). A scan that runs
again (``shared.solver.effort``) has its first run's answer stored at once, marked ``searching``; the run again's
answer replaces it. A run again that fresher work cuts short puts its job back as an improvement: the scan stays
``searching``, and its run again is live work while its scan is live (after the scans that ended after it), else
comes after every waiting scan's first answer; so does a verdict's check on resamples cut short (``checking``).

Jobs come from the backlog (``services.worker.backlog``) in the order of ``shared.state.scheduling``: the newest
finished scan first (what is left of a live scan's answer ranked by its scan's time), then the backlog oldest
first, improvements (full-grid fits, older scans' run agains and checks cut short) last. A long job yields between
iterations when fresher work waits: its checkpoint goes beside the raw frames and it resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (Bitshuffle-LZ4 frames)
import numpy as np

from services.worker.backlog import RefineBacklog, Taken
from services.worker.queue import run_forever
from shared.physics import kernels
from shared.wire import detector, framefiles
from shared.solver import fullgrid, refinement, resampling
from shared.state import scheduling
from shared.state.results import TRUST, complex_datasets
from shared.physics.errors import InputError
from shared.wire.messages import Start
from shared.solver.plans import REFINE_PLAN, Checkpoint, Preempted
from shared.solver.stages import full_stage, refined_stage
from shared.state.settings import Settings
from shared.state.store import Store

log = logging.getLogger("cdi-live.refine")

YIELD_CHECK_S = 0.5  # how often a running job asks whether fresher work waits (one Redis round trip)


class LeaseKeeper(threading.Thread):
    """Renews the job's lease while the worker computes; if the process dies, the lease runs out and
    another worker takes the job over (from its last checkpoint)."""

    def __init__(self, backlog: RefineBacklog, taken: Taken):
        super().__init__(daemon=True)
        self.backlog, self.taken, self.stopped = backlog, taken, threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.backlog.lease_s / 3):
            try:
                self.lost = self.lost or not self.backlog.renew(self.taken)
            except Exception as exc:  # Redis away: the lease may run out; the result is then not stored
                log.warning("lease of %s not renewed: %s", self.taken.id, exc)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()


class RefinementWorker:
    def __init__(self, settings: Settings, consumer: str | None = None, stop: threading.Event | None = None):
        self.settings = settings
        self.stop = stop or threading.Event()  # set on SIGINT/SIGTERM: the running job yields and is put back
        self.store = Store(settings)
        self.backlog = RefineBacklog(self.store.redis, self.store.keys, consumer, settings.claim_idle_ms / 1000,
                                     settings.max_deliveries, self.store.fail_job, settings.refine_fresh_s)
        # Fault-injection hook for the reliability tests: sleep this long at every chance to yield, so a
        # small job runs long enough to be preempted or killed mid-way. Unset in production.
        self.step_delay_s = float(os.environ.get("CDI_LIVE_TEST_STEP_DELAY_S", "0"))
        self.last_positions, self.last_published = {}, 0.0
        self.kept: dict[str, tuple] = {}  # the last checkpoint this worker wrote: path → (mtime, checkpoint)
        self.first_shown = False  # the running job's first answer is stored (its run again is an improvement)
        kernels.warm_up()  # phasing's fused loops compiled before jobs come
        # and the AD polish's steps for a live 32³ scan: its own (batch 1) and its verdict's check (a batch of resamples)
        refinement.warm_up(batches=(1, resampling.RESAMPLES), loss=REFINE_PLAN.polish_loss)

    def step(self) -> int:
        taken = self.backlog.take()
        self.publish_queue()
        if taken is None:
            time.sleep(0.2)
            return 0
        self.run(taken)  # on a bug the job stays leased: the lease runs out, it is retried, then dead-lettered
        return 1

    def run(self, taken: Taken) -> None:
        scan = taken.scan
        resumed = bool(taken.checkpoint or taken.preempted)  # it yielded before (maybe while preparing)
        self.store.update_scan(scan, queue=None, refining={"since": time.time(), "worker": self.backlog.consumer,
                                                          "resumed": resumed, "stage": taken.stage})
        self.store.publish({"event": "refining", "scan": scan, "resumed": resumed, "stage": taken.stage})
        compute = self.full_grid_scan if taken.stage == scheduling.FULL else self.refine_scan
        self.first_shown = False  # set once the first run's answer is stored (a run again follows)
        with LeaseKeeper(self.backlog, taken) as lease:
            try:
                stage, arrays, seconds = compute(taken)
            except Preempted as preempted:
                where, kept = "preparing", taken.checkpoint  # nothing new to keep: the last checkpoint stands
                if preempted.checkpoint is not None:
                    path, where = self.checkpoint_path(scan, taken.stage), preempted.checkpoint.phase
                    preempted.checkpoint.save(path)
                    self.kept = {str(path): (path.stat().st_mtime_ns, preempted.checkpoint)}  # resumed here mostly
                    kept = str(path)
                self.backlog.put_back(taken, kept, again=self.first_shown)  # then it waits as an improvement (live work)
                self.store.update_scan(scan, refining=None)
                self.store.count("jobs_preempted")
                self.store.publish({"event": "preempted", "scan": scan, "phase": where, "stage": taken.stage})
                log.info("refinement of %s yielded in %s (%s)", scan, where,
                         "worker stopping" if self.stop.is_set() else "fresher work waits")
                return
            except (OSError, KeyError, ValueError, InputError) as exc:
                if taken.stage == scheduling.FULL:  # the refined result stands: only its upgrade is lost
                    self.store.update_scan(scan, refining=None, full_grid_error=str(exc))
                else:
                    self.store.update_scan(scan, state="failed", reason=f"refinement: {exc}", refining=None)
                self.store.count("jobs_failed")
                log.error("%s stage of %s failed: %s", taken.stage, scan, exc)
                self.finish(taken)
                return
        if lease.lost:  # another worker took the job over while this one stalled: its answer counts
            log.warning("lease of %s was lost: result dropped", taken.id)
            return
        self.store.put_result(scan, taken.stage, *stage, force=True, extra=arrays)
        self.store.update_scan(scan, refining=None)
        self.store.count(f"results_{taken.stage}")
        self.store.record_latency(taken.stage, time.time() - taken.queued)
        if taken.stage == scheduling.REFINED:
            self.store.record_refine_speed(seconds / max(1, taken.voxels))
            info = stage[2]
            if info["downsampled"] and self.settings.full_grid:  # the binned answer, then every measured voxel
                self.store.queue_full_grid(scan, int(np.prod(info["region"]["shape"])))
        self.finish(taken)

    def finish(self, taken: Taken) -> None:
        self.backlog.done(taken.id)
        if taken.checkpoint:
            Path(taken.checkpoint).unlink(missing_ok=True)

    def checkpoint_path(self, scan: str, stage: str = scheduling.REFINED) -> Path:
        record = self.store.scan(scan) or {}
        folder = Path(record["raw_file"]).parent if record.get("raw_file") else self.settings.data_dir / scan
        return folder / ("full-checkpoint.npz" if stage == scheduling.FULL else "refine-checkpoint.npz")

    def yield_now(self, taken: Taken):
        """Asked between schedule steps: admits new arrivals (their records learn their place) and says
        whether a fresher job waits (``scheduling.preempts``) or the worker is stopping (a restarted
        service then resumes the job from its checkpoint)."""
        last = [0.0]

        def ask() -> bool:
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            if self.stop.is_set():
                return True
            if time.monotonic() - last[0] < YIELD_CHECK_S:
                return False
            last[0] = time.monotonic()
            if self.backlog.admit():
                self.publish_queue()
            return self.backlog.should_yield(taken)

        return ask

    def frames(self, state: dict):
        """The scan's frames as the refinement sees them: (corrected volume, counts as measured, measured
        voxels or None, the window read), padded to ≥ 32 per axis; on a large detector only the signal's
        window of it (``detector.signal_window``)."""
        with h5py.File(state["raw_file"], "r") as f, framefiles.FrameWindows(f) as stored:
            window = Window(stored.shape, detector.signal_window(stored.shape, state.get("roi")))
            received = f["received"][()] if "received" in f else np.ones(len(f["frames"]), bool)
            raw = stored.stack(np.flatnonzero(received), *window.slices)  # only the window's rows are decoded
            pixel_mask, dark, flat = (f[k][window.slices] if k in f else None
                                      for k in ("pixel_mask", "dark", "flat_field"))
            start = Start.model_validate_json(f.attrs["start"]) if "start" in f.attrs else None
        if flat is not None:  # a pixel of zero gain holds nothing
            pixel_mask = (flat == 0) if pixel_mask is None else (pixel_mask != 0) | (flat == 0)
        bad = detector.invalid(raw, raw.dtype, start.saturation_value if start else None, pixel_mask)
        counts = np.where(bad, 0, raw).astype(np.float32)  # as measured: the noise floor's
        volume = detector.corrected(counts, dark, flat) if dark is not None or flat is not None else counts
        rows = volume.shape
        volume = np.pad(volume, [(0, max(0, 32 - n)) for n in rows])
        counts = np.pad(counts, [(0, max(0, 32 - n)) for n in rows])
        measured = np.zeros(volume.shape, bool)  # frames that never arrived, invalid pixels and padding are
        measured[:rows[0], :rows[1], :rows[2]] = received[:, None, None] & ~bad  # free, not zeros
        return volume, counts, None if measured.all() else measured, window

    def resume_of(self, taken: Taken) -> Checkpoint | None:
        if not (taken.checkpoint and os.path.exists(taken.checkpoint)):
            return None
        stamp, kept = self.kept.pop(taken.checkpoint, (None, None))
        fresh = kept is not None and stamp == os.stat(taken.checkpoint).st_mtime_ns  # not rewritten elsewhere
        return kept if fresh else Checkpoint.load(taken.checkpoint)

    def refine_scan(self, taken: Taken):
        scan, options = taken.scan, taken.options  # options: from POST /api/scans/{scan}/refine
        state = self.store.scan(scan)
        nn = self.store.result(scan, "nn")
        if state is None or nn is None:
            raise KeyError("scan or its NN result is gone")
        volume, counts, measured, window = self.frames(state)
        amp, phase, info = nn
        plan = dataclasses.replace(REFINE_PLAN, polish_steps=options.get("steps") or self.settings.refine_steps,
                                   polish_loss=options.get("loss") or REFINE_PLAN.polish_loss,
                                   polish_time_budget=options.get("time_budget") or self.settings.refine_time_budget)
        crop = tuple(info.get("crop") or amp.shape)
        resume = self.resume_of(taken)
        began = time.perf_counter()

        def answer(stage):
            extra = stage.info
            seconds = sum(extra["stage_seconds"].values())  # over every run of a resumed job
            result = {"frames_used": info["frames_used"], "chi": float(stage.chi[0]), "chi_on": window.chi_on,
                      "chi_refinement_grid": float(extra["chi_refinement_grid"][0]), "seconds": seconds,
                      **{key: extra[key][0] for key in TRUST}, "searching": extra["searching"][0],
                      "checking": bool(extra.get("checking", [False])[0]),
                      "runs": extra["runs"][0], "wall_seconds": time.perf_counter() - began,
                      "resumed": bool(resume is not None or taken.preempted),
                      "seq": info["seq"], "crop": extra["grid"], "voxel_grid": extra["region"][0]["shape"],
                      "nn_crop": list(crop), "loss": plan.polish_loss, "grid": extra["grid"],
                      "region": extra["region"][0], "downsampled": extra["downsampled"],
                      "phase_ramp": extra["phase_ramp"],
                      "bragg_peak_offset": window.on_detector(extra["bragg_peak_offset"][0]),
                      "start": extra["start"][0], "plan": extra["plan"]}
            finalists = stage.finalists[0]  # the full-grid stage's seeds
            arrays = {"phase_uncertainty": stage.uncertainty[0], **complex_datasets("finalists", finalists)}
            return (stage.amplitude[0], stage.phase[0], result), arrays, seconds

        def show_first(stage) -> None:  # the first run's answer at once; the run again's replaces it
            (amplitude, phase_, result), arrays, _ = answer(stage)
            self.store.put_result(scan, taken.stage, amplitude, phase_, result, force=True, extra=arrays)
            self.first_shown = True

        stage = refined_stage(volume[None], amp[None], phase[None], [crop], None if measured is None else measured[None],
                              self.settings.refine_size, plan, on_input_grid=False,  # ≤ refine_size³: Redis holds it
                              yield_now=self.yield_now(taken), resume=resume, counts=counts[None], on_first=show_first,
                              requeue_again=True)  # a run again cut short comes back when the cores are free
        return answer(stage)

    def full_grid_scan(self, taken: Taken):
        """The full-grid stage of a refined scan: its refined finalists fitted to every measured voxel."""
        scan = taken.scan
        state, refined = self.store.scan(scan), self.store.result(scan, "refined")
        finalists = self.store.result_complex(scan, "refined", "finalists")
        if state is None or refined is None or finalists is None:
            raise KeyError("scan or its refined result is gone")
        info = refined[2]
        volume, _, measured, window = self.frames(state)
        began = time.perf_counter()
        stage = full_stage(volume[None], {"region": [info["region"]], "chi_floor": [info["chi_floor"]],
                                          "coherence_blur": [info.get("coherence_blur")],
                                          "background": [info.get("background")],
                                          "bragg_peak_offset": [window.in_window(info["bragg_peak_offset"])]},
                           finalists[None], None if measured is None else measured[None],
                           fullgrid.FULL_PLAN, self.yield_now(taken), self.resume_of(taken),
                           keep_ramp=False)  # the service keeps answers free of the peak's ramp, as the refined stage's
        fit = stage.info["fit"][0]
        result = {"frames_used": info["frames_used"], "chi": float(stage.chi[0]), "chi_on": window.chi_on,
                  "seconds": fit["seconds"], **{key: stage.info[key][0] for key in TRUST},
                  "wall_seconds": time.perf_counter() - began,
                  "seq": info["seq"], "grid": list(volume.shape), "voxel_grid": list(volume.shape),
                  "region": info["region"], "downsampled": False, "phase_ramp": stage.info["phase_ramp"],
                  "bragg_peak_offset": info["bragg_peak_offset"], "plan": stage.info["plan"],
                  "iterations": fit["iterations"], "support_grown_by": fit["support_grown_by"], "device": fit["device"],
                  "width_screen": fit["width_screen"], "coherence_blur_refined": info.get("coherence_blur"),
                  "chi_history": fit["chi_history"],
                  "chi_refined": info["chi"]}
        return (stage.amplitude[0], stage.phase[0], result), {"phase_uncertainty": stage.uncertainty[0]}, fit["seconds"]

    def publish_queue(self) -> None:
        """Every waiting scan's record says where it stands: {"stage", "position", "eta_s"}."""
        waiting = self.backlog.waiting_jobs()
        if not waiting:
            return
        places = scheduling.positions(waiting, time.time(), self.store.refine_speed(),
                                      len(self.store.live_workers("refine")), self.backlog.running_jobs(),
                                      self.settings.refine_fresh_s)
        positions = {job_id: place["position"] for job_id, place in places.items()}
        if positions == self.last_positions and time.monotonic() - self.last_published < 10:
            return  # nothing moved (the ETAs are refreshed every 10 s)
        self.last_positions, self.last_published = positions, time.monotonic()
        scans = self.backlog.scan_of(list(places))
        pipe = self.store.redis.pipeline(transaction=False)
        for job_id, place in places.items():
            if job_id in scans:
                self.store.update_scan(scans[job_id], pipe=pipe, queue=place)
        self.store.publish({"event": "queue", "waiting": len(places)}, pipe)
        pipe.execute()


@dataclasses.dataclass(frozen=True)
class Window:
    """The part of the detector a refinement reads (all of it, or a large detector's signal window), and
    how its Bragg-peak offsets (from the centre of the volume refined) map to the whole detector's, which
    is what the lab-frame maps read."""

    detector: tuple  # (rows, columns)
    slices: tuple  # (rows, columns) read

    @property
    def shift(self) -> list[int]:
        return detector.window_shift(self.detector, self.slices)

    def on_detector(self, offset) -> list[int]:
        return [int(k) + int(d) for k, d in zip(offset, self.shift)]

    def in_window(self, offset) -> list[int]:
        return [int(k) - int(d) for k, d in zip(offset, self.shift)]

    @property
    def chi_on(self) -> str:
        """What χ is measured on: the scan's frames, or the window of them refined."""
        shape = [w.stop - w.start for w in self.slices]
        if shape == list(self.detector):
            return "measured frames"
        return f"measured frames, {shape[0]}×{shape[1]}-pixel window of the {self.detector[0]}×{self.detector[1]} " \
               f"detector"


def serve(settings: Settings, stop: threading.Event | None = None, consumer: str | None = None) -> None:
    stop = stop or threading.Event()
    os.nice(scheduling.REFINE_NICENESS)  # the scan being taken now first (``shared.state.scheduling``, CPU)
    worker = RefinementWorker(settings, consumer, stop)
    log.info("refinement worker %s ready", worker.backlog.consumer)
    run_forever(worker.step, stop, "refine", lambda: worker.store.heartbeat("refine", worker.backlog.consumer))
    worker.store.farewell("refine", worker.backlog.consumer)
