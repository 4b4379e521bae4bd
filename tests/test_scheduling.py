"""Scheduling by freshness: the policy, preemption that resumes exactly, and the backlog in real Redis."""

import time
import uuid

import numpy as np
import pytest
import redis

from services.worker.backlog import RefineBacklog
from shared.state import scheduling
from shared.solver.evaluation import held_out_set
from shared.solver.plans import Checkpoint, Plan, Preempted, converge, stall_checks
from shared.state.settings import Settings, keys
from shared.state.scheduling import Job


def test_live_jobs_newest_first_then_the_backlog_oldest_first():
    now = 1000.0
    jobs = [Job("old1", now - 500), Job("old2", now - 400), Job("live1", now - 30), Job("live2", now - 5)]
    assert [j.id for j in scheduling.order(jobs, now, fresh_s=120)] == ["live2", "live1", "old1", "old2"]
    assert scheduling.first(jobs[3], jobs[0], now, 120).id == "live2"
    assert scheduling.first(jobs[1], jobs[0], now, 120).id == "old1"  # nothing live: oldest first
    # a running backlog job yields to live work queued after it; never the other way round
    assert scheduling.preempts(jobs[3], jobs[0], now, 120)
    assert not scheduling.preempts(jobs[2], jobs[3], now, 120)
    assert not scheduling.preempts(jobs[1], jobs[0], now, 120)
    places = scheduling.positions(jobs, now, 1e-5, workers=1, running=[Job("r", now - 1, 128**3)], fresh_s=120)
    assert places["live2"] == {"stage": "refined", "position": 1, "eta_s": round(128**3 * 1e-5 / 2, 1)}
    assert places["old2"]["position"] == 4 and places["old2"]["eta_s"] > places["old1"]["eta_s"]


def test_a_preempted_refinement_resumes_exactly_where_it_stopped(tmp_path):
    """Yielding at any schedule step (the AD polish included) and resuming from the saved checkpoint gives
    the same answer, bit for bit, as one uninterrupted run."""
    intensity, truth = held_out_set(1, 9910)
    start = np.abs(truth).astype(np.complex64)
    whole = converge(intensity, start)
    for every in (2, 5, 11):
        asked, checkpoint, phases = [0], None, []

        def yield_now(every=every):
            asked[0] += 1
            return asked[0] % every == 0

        while True:
            try:
                result = converge(intensity, start, yield_now=yield_now, resume=checkpoint)
                break
            except Preempted as preempted:
                preempted.checkpoint.save(tmp_path / "c.npz")
                checkpoint = Checkpoint.load(tmp_path / "c.npz")
                phases.append(checkpoint.phase)
        assert phases and np.array_equal(result.obj, whole.obj) and np.array_equal(result.chi, whole.chi)
        assert result.start == whole.start
    assert {"converge", "flatten", "tighten", "final", "polish"} <= set(phases)


def test_a_converge_that_stops_runs_on_free_chi_resumes_exactly_where_it_stopped(tmp_path):
    """With ``converge_stall`` some runs stop at the end of an ER stretch and the rest go on without them; a
    preemption in between keeps which runs stopped, and the answer is the uninterrupted run's, bit for bit."""
    intensity, truth = held_out_set(2, 9910)
    start = np.abs(truth).astype(np.complex64)
    plan = Plan(starts=("random", "flat"), explore=(), converge="3*(20*ER+30*HIO)+20*ER", converge_stall=0.5,
                polish_steps=0)
    assert stall_checks(plan.converge) == [20, 70, 120]
    whole = converge(intensity, start, plan=plan, seed=1)
    asked, checkpoint, stopped = [0], None, []

    def yield_now():
        asked[0] += 1
        return asked[0] % 17 == 0

    while True:
        try:
            result = converge(intensity, start, plan=plan, seed=1, yield_now=yield_now, resume=checkpoint)
            break
        except Preempted as preempted:
            preempted.checkpoint.save(tmp_path / "c.npz")
            checkpoint = Checkpoint.load(tmp_path / "c.npz")
            stopped.append(int(checkpoint.arrays.get("stopped", np.zeros(1, bool)).sum()))
    assert max(stopped) > 0, "a generous stall stops some runs"
    assert np.array_equal(result.obj, whole.obj) and np.array_equal(result.chi_free, whole.chi_free)


@pytest.fixture
def backlog():
    client = redis.Redis()
    settings = Settings(key_prefix=f"sched{uuid.uuid4().hex[:6]}")
    k = keys(settings)
    yield client, k, lambda consumer, **kw: RefineBacklog(client, k, consumer, **kw)
    for key in client.scan_iter(f"{settings.key_prefix}:*"):
        client.delete(key)


def test_backlog_serves_the_newest_live_job_and_reclaims_a_dead_workers_lease(backlog):
    client, k, make = backlog
    a = make("a", lease_s=0.5, fresh_s=60)
    now = time.time()
    for scan, queued in (("old", now - 600), ("older", now - 900), ("new", now - 10), ("newest", now - 1)):
        client.xadd(k.refine_jobs, {"scan": scan, "queued": queued, "voxels": 32**3})
    order = []
    while (taken := a.take()) is not None:
        order.append(taken.scan)
        if taken.scan == "new":
            a.put_back(taken, "/somewhere/checkpoint.npz")  # preempted: waits again at its own place
            again = a.take()
            assert again.scan == "new" and again.checkpoint == "/somewhere/checkpoint.npz" and again.deliveries == 1
            taken = again
        a.done(taken.id)
    assert order == ["newest", "new", "older", "old"]
    assert client.xlen(k.refine_jobs) == 0 and client.zcard(f"{k.refine_jobs}:waiting") == 0
    # a worker that dies holding a job: its lease runs out, another takes the job over; too many deaths bury it
    client.xadd(k.refine_jobs, {"scan": "doomed", "queued": time.time()})
    dead = []
    b = make("b", lease_s=0.5, max_deliveries=2, on_dead=lambda fields, reason: dead.append(reason))
    assert a.take().scan == "doomed"
    assert b.take() is None  # leased to a
    time.sleep(0.6)
    assert (taken := b.take()).scan == "doomed" and taken.deliveries == 2
    time.sleep(0.6)
    assert b.take() is None and dead and "crashed" in dead[0]
    assert client.zcard(f"{k.refine_jobs}:running") == 0 and client.xlen(k.dead_letters) == 1


def test_previews_of_the_scan_being_taken_now_come_first():
    started = {"burst-1": 100.0, "live": 300.0, "burst-2": 200.0}
    assert scheduling.previews_to_run(started) == ["live", "burst-2"]
    assert scheduling.previews_to_run(started, limit=1) == ["live"] and scheduling.previews_to_run({}) == []


def test_a_run_again_cut_short_is_live_work_while_its_scan_is_live_then_waits_behind_every_first_answer():
    """A refinement put back in its run again or its check (its scan shows an answer) is an improvement. While its
    scan is live it is live work, ranked by its scan's time: after the scans that ended after it, before those that
    ended before it and the backlog; it preempts older work and yields only to newer live work. Afterwards it waits
    after live and backlog refinements, before full-grid fits (seconds of work against minutes, even an older
    fit's); running, it yields to any refinement."""
    now = 1000.0
    again = Job("again", now - 10, again=True)
    jobs = [Job("old", now - 500), Job("live", now - 5), again, Job("full", now - 400, stage=scheduling.FULL),
            Job("older-again", now - 300, again=True), Job("burst", now - 60)]
    assert [j.id for j in scheduling.order(jobs, now, fresh_s=120)] == ["live", "again", "burst", "old", "older-again",
                                                                         "full"]
    burst, old, live = Job("burst", now - 60), Job("old", now - 500), Job("live", now - 5)
    assert scheduling.first(live, old, now, 120, jobs[4], again) is live
    assert scheduling.first(burst, old, now, 120, jobs[4], again) is again
    for older in (burst, old):  # it preempts older live work and the backlog, and never the other way round
        assert scheduling.preempts(again, older, now, 120) and not scheduling.preempts(older, again, now, 120)
    assert scheduling.preempts(live, again, now, 120) and not scheduling.preempts(again, live, now, 120)
    later = now + 200  # its scan is no longer live: an improvement like any other
    assert [j.id for j in scheduling.order(jobs, later, fresh_s=120)] == ["old", "burst", "live", "older-again",
                                                                           "again", "full"]
    assert scheduling.first(None, None, later, 120, again, again) is again
    assert scheduling.preempts(old, again, later, 120)  # even a backlog refinement
    assert not scheduling.preempts(again, old, later, 120)  # an improvement preempts no refinement
    full = Job("full", now - 400, stage=scheduling.FULL)
    assert scheduling.preempts(again, full, later, 120)  # a full-grid stage (minutes) gives way to a run again
    assert not scheduling.preempts(full, again, later, 120) and not scheduling.preempts(full, full, later, 120)
    assert scheduling.improvement_of("full", scheduling.waiting_score(now - 400, scheduling.FULL)) == full
    assert scheduling.improvement_of("again", scheduling.waiting_score(now - 10)) == again
    assert scheduling.is_live(again, now, 120) and not scheduling.is_live(again, later, 120)


def test_the_backlog_puts_a_cut_run_again_behind_the_first_answers_and_keeps_it_there(backlog):
    """In real Redis: the newest live job, cut in its run again, waits in the improvements' set; once its scan is
    no longer live the older refinements are taken first; taken again it is still an improvement (and yields to
    any refinement), and a lease that runs out puts it back among the improvements."""
    client, k, make = backlog
    now = time.time()
    for scan, queued in (("old", now - 600), ("live", now - 5)):
        client.xadd(k.refine_jobs, {"scan": scan, "queued": queued, "voxels": 32**3})
    taken = make("first", fresh_s=60).take()
    assert taken.scan == "live" and not taken.again
    a = make("a", lease_s=0.5, fresh_s=1)  # for this worker its scan is no longer live
    a.put_back(taken, None, again=True)
    assert client.zcard(f"{k.refine_jobs}:waiting:full") == 1
    assert [j.id for j in a.waiting_jobs() if j.again] == [taken.id]
    old = a.take()
    assert old.scan == "old"  # a first answer before any improvement
    a.done(old.id)
    again = a.take()
    assert again.scan == "live" and again.again and again.job.improving
    client.xadd(k.refine_jobs, {"scan": "backlog", "queued": now - 300, "voxels": 32**3})
    a.admit()
    assert a.should_yield(again)  # an improvement yields to any refinement
    time.sleep(0.6)  # its worker died: the lease runs out
    a.reclaim()
    assert client.zscore(f"{k.refine_jobs}:waiting:full", again.id) is not None


def test_in_redis_a_cut_run_again_goes_before_an_older_full_grid_fit(backlog):
    """The improvements' set holds the policy's order: a live scan's run again, cut short, is taken before a
    backlog scan's full-grid fit queued minutes earlier; both after every refinement; a running fit gives way to a
    run again; a run again whose lease ran out keeps its place before the fit."""
    client, k, make = backlog
    a = make("a", lease_s=0.5, fresh_s=60)
    now = time.time()
    client.xadd(k.refine_jobs, {"scan": "backlog", "queued": now - 300, "voxels": 10**7, "stage": scheduling.FULL})
    client.xadd(k.refine_jobs, {"scan": "live", "queued": now - 5, "voxels": 32**3})
    live = a.take()
    assert live.scan == "live"
    a.put_back(live, None, again=True)
    ordered = scheduling.order(a.waiting_jobs(), time.time(), 60)
    assert [(j.id, j.stage) for j in ordered][0] == (live.id, scheduling.REFINED) and ordered[1].stage == scheduling.FULL
    assert all(abs(j.queued - now) < 400 for j in a.waiting_jobs())  # the API's queue times are wall-clock
    again = a.take()
    assert again.scan == "live" and again.again
    a.done(again.id)
    fit = a.take()
    assert fit.scan == "backlog" and fit.stage == scheduling.FULL and not a.should_yield(fit)
    client.xadd(k.refine_jobs, {"scan": "live-2", "queued": time.time(), "voxels": 32**3})
    a.admit()
    assert a.should_yield(fit)  # a refinement waits
    cut = a.take()
    assert cut.scan == "live-2"
    a.put_back(cut, None, again=True)  # its run again cut short, as by the next live scan
    assert a.should_yield(fit)  # the running full-grid fit gives way to the run again
    a.put_back(fit, None)
    assert a.take().scan == "live-2"
    time.sleep(0.6)  # that worker died: the lease runs out, the run again keeps its place before the fit
    a.reclaim()
    assert a.take().scan == "live-2" and a.take().scan == "backlog"


def test_in_redis_a_live_scans_cut_work_comes_before_older_scans(backlog):
    """What is left of a live scan's answer (its run again or its check, cut short: an improvement) is taken after
    newer live refinements and before older ones and the backlog; a running older job gives way to it, it gives way
    only to newer live work; once its scan is no longer live it waits after the backlog."""
    client, k, make = backlog
    a = make("a", lease_s=5, fresh_s=60)
    now = time.time()
    for scan, queued in (("older", now - 500), ("burst", now - 30), ("live", now - 5)):
        client.xadd(k.refine_jobs, {"scan": scan, "queued": queued, "voxels": 32**3})
    live = a.take()
    assert live.scan == "live"
    client.xadd(k.refine_jobs, {"scan": "next", "queued": time.time(), "voxels": 32**3})
    a.admit()
    assert a.should_yield(live)
    a.put_back(live, "/somewhere/refine-checkpoint.npz", again=True)  # cut in its check (or its run again)
    ordered = [j.id for j in scheduling.order(a.waiting_jobs(), time.time(), 60)]
    scans = a.scan_of(ordered)
    assert [scans[j] for j in ordered] == ["next", "live", "burst", "older"]
    following = a.take()
    assert following.scan == "next" and not a.should_yield(following)  # newer live work does not wait for it
    a.done(following.id)
    again = a.take()
    assert again.scan == "live" and again.again and again.checkpoint == "/somewhere/refine-checkpoint.npz"
    assert not a.should_yield(again)  # not to older live work, nor to the backlog
    a.done(again.id)
    client.xadd(k.refine_jobs, {"scan": "newer", "queued": time.time(), "voxels": 32**3})
    newer = a.take()
    burst = a.take()  # a second worker's, while "newer" is cut in its run again
    assert (newer.scan, burst.scan) == ("newer", "burst") and not a.should_yield(burst)
    a.put_back(newer, None, again=True)
    assert a.should_yield(burst)  # a newer live scan's cut work preempts an older live scan's refinement
    a.put_back(burst, None)
    assert [make("c", fresh_s=1e-3).take().scan for _ in range(3)] == ["older", "burst", "newer"]  # none live
