"""Which refinement runs next: the scheduling policy, in one place.

    live      a scan's refinement queued less than FRESH_S ago, and what is left of such a scan's answer
              that the next scan cut short: its run again (``shared.solver.effort``; 2–3 s at 32³) or
              its verdict's check on resamples (``shared.solver.resampling``; ~1 s), the answer shown
              meanwhile, "searching" or "checking"; newest first by the scan's time (the scan being taken
              now is the one an operator is watching, and the one just before it the one they watched:
              as an improvement its check or run again waited ~130 s behind a 5-scan burst)
    backlog   every older refinement: oldest first, whenever no live job waits
    improve   work on a scan that already shows an answer and is no longer live, the lowest priority,
              only when no refinement waits (every scan's first answer comes before any improvement):
              a run again or a check cut short, then full-grid stages (``shared.solver.fullgrid``;
              minutes each); each kind oldest first (a live scan's settled answer waits on no
              backlog's full grid)
    preempt   a running job yields, between schedule steps, to waiting live work queued after it (a
              backlog job or an improvement to any live work); an improvement also to any waiting
              refinement, and a full-grid stage to a waiting run again; so two jobs never take turns
              preempting each other; each keeps its state and resumes later (a run again cut short
              keeps its first run's answers, and only the run again runs)
    ETA       the jobs ahead, each at the measured seconds per refined voxel,
              shared among the live refinement workers
    CPU       on a shared machine the refinement worker runs at REFINE_NICENESS: the
              scan being taken now (its ingest and previews) gets the cores first, and
              a refinement (a run again's long search most of all) uses what is left

    asking    the ingest asks a preview about every PREVIEW_INTERVAL_S of acquisition (frames at the
              scan's rate so far, at least PREVIEW_MIN_FRAMES apart; PREVIEW_EVERY, a setting,
              fixes the frames instead) while the scan, at
              its frame rate so far, has PREVIEW_MIN_LEFT_S (a setting) or more to go: a preview
              of a scan about to end would come after its final input (a 200-frame
              scan at 1 kHz lasts 0.2 s), so only the final is computed
    previews  the inference worker computes at most PREVIEWS_PER_STEP previews
              per step, of the scans started last (the one being taken now);
              the others are dropped (their scans' next previews come), final
              jobs always run; a preview made stale by a newer one of the same
              scan is dropped too (``services.worker.infer``)

Pure functions of (job, time): the Redis side is ``services.worker.backlog``.
"""

from __future__ import annotations

from dataclasses import dataclass

FRESH_S = 120.0  # a finished scan is "live" work this long after its refinement was queued
DEFAULT_S_PER_VOXEL = 2e-5  # before any refinement was timed (≈ 35 s for a 128³ grid on 2 cores)


REFINE_NICENESS = 10  # the refinement worker's process niceness (0: as the others; CFS weight ~1/9 of theirs at 10)
REFINED, FULL = "refined", "full"  # the stages this policy orders
PREVIEWS_PER_STEP = 2  # each costs ~0.3 s at 32³ on 2 cores (the refined plan without its polish)
PREVIEW_MIN_LEFT_S = 0.5  # a network input takes ~0.07 s to assemble, a preview ~0.3 s more to compute
# The next scan's previews share the cores with the refinement of the scan just ended: at one every 4 frames
# (0.4 s at 10 frames/s) that refinement took 3.1 s after its scan's end (median of 3); at one every 8 frames
# (0.8 s), 1.3–1.6 s in each of 6 live scans; at this cadence, medians of 1.27 and 1.93 s in two runs; previews
# still ≤ 1.6 s apart (docs/BENCHMARKS.md, "Twenty-sixth session")
PREVIEW_INTERVAL_S = 0.8
PREVIEW_MIN_FRAMES = 4  # a preview needs new frames to show anything new


def frames_timed(frames_in: int, seconds_acquiring: float, frames_before: int = 0) -> int:
    """The frames a scan's rate so far is timed over, received in ``seconds_acquiring``: all but
    ``frames_before``, which a restarted ingest found in the file; 0 while there is no rate yet."""
    timed = frames_in - frames_before
    return timed if timed > 0 and seconds_acquiring > 0 else 0


def preview_every(frames_in: int, seconds_acquiring: float, frames_before: int = 0,
                  interval_s: float = PREVIEW_INTERVAL_S) -> int:
    """Frames between previews: about one every ``interval_s`` at the scan's frame rate so far
    (``frames_timed``), at least PREVIEW_MIN_FRAMES."""
    timed = frames_timed(frames_in, seconds_acquiring, frames_before)
    if not timed:
        return PREVIEW_MIN_FRAMES
    return max(PREVIEW_MIN_FRAMES, round(interval_s * timed / seconds_acquiring))


def preview_worth_asking(frames_in: int, frames_expected: int, seconds_acquiring: float,
                         min_left_s: float = PREVIEW_MIN_LEFT_S, frames_before: int = 0) -> bool:
    """Will the scan, at its frame rate so far (``frames_timed``), still be acquiring ``min_left_s`` from now?"""
    if min_left_s <= 0:
        return True
    timed = frames_timed(frames_in, seconds_acquiring, frames_before)
    if not timed:
        return False
    return (frames_expected - frames_in) * seconds_acquiring / timed >= min_left_s


def previews_to_run(started: dict[str, float], limit: int = PREVIEWS_PER_STEP) -> list[str]:
    """Of the scans with a preview waiting (scan → its start time), those to compute now: the newest first."""
    return sorted(started, key=lambda scan: -started[scan])[:limit]


@dataclass(frozen=True)
class Job:
    id: str
    queued: float  # wall-clock time the stage was asked for (the scan's end, a user's re-run, the refined result)
    voxels: int = 32**3  # on the stage's grid: what the job costs
    stage: str = REFINED
    again: bool = False  # a refinement cut short in its run again or its verdict's check: its scan shows its answer

    @property
    def improving(self) -> bool:
        """Work on a scan that already shows an answer."""
        return self.stage == FULL or self.again


IMPROVE_RANK_S = 1e10  # beyond any wall-clock time: a full-grid stage's place after every run again


def waiting_score(queued: float, stage: str = REFINED) -> float:
    """A waiting job's score in its Redis sorted set, lowest first: for refinements when it was queued; for
    improvements the same behind its kind's rank (run agains, then full-grid stages), so that the set's own
    order is the "improve" tier's."""
    return queued + (IMPROVE_RANK_S if stage == FULL else 0.0)


def improvement_of(job_id: str, score: float) -> Job:
    """A waiting improvement as its score tells it (``waiting_score``'s inverse): a full-grid stage or a run again."""
    if score >= IMPROVE_RANK_S:
        return Job(job_id, score - IMPROVE_RANK_S, stage=FULL)
    return Job(job_id, score, again=True)


def is_live(job: Job, now: float, fresh_s: float = FRESH_S) -> bool:
    """A refinement queued less than ``fresh_s`` ago, or a run again or check cut short of such a scan."""
    return job.stage != FULL and now - job.queued < fresh_s


def order(waiting: list[Job], now: float, fresh_s: float = FRESH_S) -> list[Job]:
    """The waiting jobs in the order they will run: live work newest first, then the backlog's oldest first,
    then run agains and then full-grid stages, each oldest first."""
    live = sorted((j for j in waiting if is_live(j, now, fresh_s)), key=lambda j: (-j.queued, j.improving, j.id))
    backlog = sorted((j for j in waiting if not j.improving and not is_live(j, now, fresh_s)),
                     key=lambda j: (j.queued, j.id))
    improving = sorted((j for j in waiting if j.improving and not is_live(j, now, fresh_s)),
                       key=lambda j: (waiting_score(j.queued, j.stage), j.id))
    return live + backlog + improving


def first(newest: Job | None, oldest: Job | None, now: float, fresh_s: float = FRESH_S,
          first_improving: Job | None = None, newest_again: Job | None = None) -> Job | None:
    """``order(...)[0]`` from just the newest and oldest waiting refinements, the first waiting improvement and
    the newest waiting run again or check cut short (what a worker reads to take one)."""
    live = [j for j in (newest, newest_again) if j is not None and is_live(j, now, fresh_s)]
    if live:
        return min(live, key=lambda j: (-j.queued, j.improving))
    return oldest if oldest is not None else first_improving


def preempts(waiting: Job | None, running: Job, now: float, fresh_s: float = FRESH_S) -> bool:
    """Should ``running`` yield to ``waiting`` (the newest waiting refinement, the newest waiting run again or
    check, or the first waiting improvement)? Only to live work queued after it, or to any live work where it is
    not live itself; an improvement also to any refinement, and a full-grid stage to a run again. So two jobs
    never take turns preempting each other."""
    if waiting is None:
        return False
    if is_live(waiting, now, fresh_s):
        return not is_live(running, now, fresh_s) or waiting.queued > running.queued
    if waiting.improving:
        return waiting.again and running.stage == FULL
    return running.improving and not is_live(running, now, fresh_s)


def eta(ahead: list[Job], seconds_per_voxel: float, workers: int) -> float:
    """Seconds until a job with ``ahead`` before it starts, with ``workers`` refining in parallel."""
    return sum(j.voxels for j in ahead) * seconds_per_voxel / max(1, workers)


def positions(waiting: list[Job], now: float, seconds_per_voxel: float, workers: int,
              running: list[Job] = (), fresh_s: float = FRESH_S) -> dict[str, dict]:
    """Per waiting job: its record's ``queue`` field, {"stage", "position" (jobs ahead), "eta_s"}.

    Jobs being refined now count as ahead (half their cost: on average half done)."""
    busy = sum(j.voxels for j in running) * seconds_per_voxel / 2
    out, before = {}, []
    for k, job in enumerate(order(waiting, now, fresh_s)):
        out[job.id] = {"stage": job.stage, "position": k + len(running),
                       "eta_s": round(busy / max(1, workers) + eta(before, seconds_per_voxel, workers), 1)}
        before.append(job)
    return out
