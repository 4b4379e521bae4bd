"""The refinement backlog in Redis, served in the order of ``shared.state.scheduling`` (not arrival order).

    arrive   producers XADD to the refine stream (as before: one append-only log of what was asked)
    admit    any worker moves new stream entries into the backlog: a job hash and a sorted set by the
             time the job was queued (one set for refinements, one for improvements: run agains cut short,
             then full-grid fits, ``scheduling.waiting_score``); XACK only in
             the same transaction, so a crash loses nothing
    take     the job ``scheduling.first`` picks, moved atomically (WATCH/MULTI) to the running set,
             scored by its lease's end; the worker renews the lease while it works
    yield    a preempted job goes back to the waiting set with its checkpoint's path; a run again or a
             verdict's check cut short goes to the improvements' set (``again``: its scan shows its answer),
             where a live scan's is found by its time (live work: ``scheduling``)
    reclaim  a lease that ran out (its worker died) puts the job back; one delivered more than
             ``max_deliveries`` times is dead-lettered
    done     job hash, lease and checkpoint removed

Several workers on one machine or many share one backlog under the same rules; each job is done
once (a job is in exactly one of waiting or running, and only the lease holder finishes it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass

import redis

from services.worker.queue import join_group
from shared.state import scheduling

log = logging.getLogger("cdi-live.backlog")


@dataclass
class Taken:
    id: str
    scan: str
    queued: float
    voxels: int
    options: dict
    checkpoint: str | None  # where a preempted run stopped (None: a fresh start)
    deliveries: int
    preempted: int = 0  # times it yielded to fresher work before
    stage: str = scheduling.REFINED
    again: bool = False  # its run again was cut short before: its scan shows the first answer

    @property
    def job(self) -> scheduling.Job:
        return scheduling.Job(self.id, self.queued, self.voxels, self.stage, self.again)


class RefineBacklog:
    def __init__(self, client: redis.Redis, keys, consumer: str | None = None, lease_s: float = 30.0,
                 max_deliveries: int = 3, on_dead=None, fresh_s: float = scheduling.FRESH_S):
        self.redis, self.keys = client, keys
        self.stream, self.group = keys.refine_jobs, "refine"
        self.waiting, self.running = f"{keys.refine_jobs}:waiting", f"{keys.refine_jobs}:running"
        # improvements (full-grid fits, run agains cut short): after every refinement; the key keeps its old name
        self.waiting_improving = f"{keys.refine_jobs}:waiting:full"
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_s, self.max_deliveries, self.on_dead, self.fresh_s = lease_s, max_deliveries, on_dead, fresh_s
        self.ensure_group()

    def job_key(self, job_id: str) -> str:
        return f"{self.stream}:job:{job_id}"

    def ensure_group(self) -> None:
        join_group(self.redis, self.stream, self.group)

    # arrive → admit ------------------------------------------------------------------------
    def admit(self, count: int = 500) -> int:
        """Move new (and abandoned mid-admission) stream entries into the backlog; returns how many."""
        try:
            claimed = self.redis.xautoclaim(self.stream, self.group, self.consumer, 5000, "0-0", count=count)[1]
            fresh = self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
            self.ensure_group()  # Redis restarted empty: join again
            return 0
        entries = list(claimed) + [e for _, batch in fresh or [] for e in batch]
        if not entries:
            return 0
        pipe = self.redis.pipeline(transaction=True)
        for entry_id, fields in entries:
            if fields:
                job_id = entry_id.decode()
                fields = {k.decode(): v.decode() for k, v in fields.items()}
                queued = float(fields.get("queued", time.time()))
                pipe.hset(self.job_key(job_id), mapping={**fields, "queued": queued, "deliveries": 0})
                stage = fields.get("stage") or scheduling.REFINED
                pipe.zadd(self.waiting_of(stage), {job_id: scheduling.waiting_score(queued, stage)}, nx=True)
            pipe.xack(self.stream, self.group, entry_id)
            pipe.xdel(self.stream, entry_id)  # the backlog holds it now: the stream stays the arrivals not yet admitted
        pipe.execute()
        return len(entries)

    # take ---------------------------------------------------------------------------------
    def take(self) -> Taken | None:
        """The next job by the scheduling policy, leased to this worker; None when nothing waits."""
        self.reclaim()
        self.admit()
        for _ in range(20):  # another worker may take the same job at the same moment: then try again
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(self.waiting, self.waiting_improving)
                    newest, oldest, improving, again = self.heads(pipe)
                    if newest is None and improving is None:
                        return None
                    pick = scheduling.first(newest, oldest, time.time(), self.fresh_s, improving, again)
                    pipe.multi()
                    pipe.zrem(self.waiting_improving if pick.improving else self.waiting, pick.id)
                    pipe.zadd(self.running, {pick.id: time.time() + self.lease_s})
                    pipe.hset(self.job_key(pick.id), mapping={"owner": self.consumer, "started": time.time()})
                    pipe.hincrby(self.job_key(pick.id), "deliveries", 1)
                    pipe.hgetall(self.job_key(pick.id))
                    fields = pipe.execute()[-1]
                except redis.WatchError:
                    continue
            fields = {k.decode(): v.decode() for k, v in fields.items()}
            if "scan" not in fields:  # its hash vanished (the scan was deleted): nothing to do
                self.done(pick.id)
                continue
            deliveries = int(fields.get("deliveries", 1))
            taken = Taken(pick.id, fields["scan"], float(fields["queued"]), int(fields.get("voxels") or 32**3),
                          json.loads(fields.get("options") or "{}"), fields.get("checkpoint") or None, deliveries,
                          int(fields.get("preempted") or 0), fields.get("stage") or scheduling.REFINED,
                          fields.get("again") == "1")
            if deliveries > self.max_deliveries:
                self.bury(taken, f"job crashed its worker {self.max_deliveries} times")
                continue
            return taken
        return None

    @staticmethod
    def as_job(member: bytes, score: float, improving: bool = False) -> scheduling.Job:
        """A waiting job as the policy sees it before its hash is read: a refinement, or an improvement, whose
        set's scores hold the policy's order and its kind (``scheduling.waiting_score``)."""
        if improving:
            return scheduling.improvement_of(member.decode(), float(score))
        return scheduling.Job(member.decode(), float(score))

    def waiting_of(self, stage: str | None, again: bool = False) -> str:
        return self.waiting_improving if stage == scheduling.FULL or again else self.waiting

    def heads(self, client) -> tuple:
        """What the policy reads of the waiting sets (``scheduling.first``, ``scheduling.preempts``): the newest and
        the oldest waiting refinement, the first waiting improvement and the newest waiting run again or check cut
        short (live work while its scan is live); each a Job or None."""
        newest = client.zrevrange(self.waiting, 0, 0, withscores=True)
        oldest = client.zrange(self.waiting, 0, 0, withscores=True)
        improving = client.zrange(self.waiting_improving, 0, 0, withscores=True)
        again = client.zrevrangebyscore(self.waiting_improving, f"({scheduling.IMPROVE_RANK_S}", "-inf",
                                        start=0, num=1, withscores=True)
        return (self.as_job(*newest[0]) if newest else None, self.as_job(*oldest[0]) if oldest else None,
                self.as_job(*improving[0], improving=True) if improving else None,
                self.as_job(*again[0], improving=True) if again else None)

    def should_yield(self, running: Taken) -> bool:
        """Waiting live work queued after the running job (any, for a backlog job or an improvement), or (for a
        full-grid stage) a waiting run again (``scheduling.preempts``)? The caller admits new arrivals first, so a
        scan that just ended counts at once."""
        newest, _, improving, again = self.heads(self.redis)
        now = time.time()
        return any(scheduling.preempts(job, running.job, now, self.fresh_s) for job in (newest, again, improving))

    def renew(self, taken: Taken) -> bool:
        """Extend this worker's lease; False when it was lost (another worker reclaimed the job)."""
        if (self.redis.hget(self.job_key(taken.id), "owner") or b"").decode() != self.consumer:
            return False
        return self.redis.zadd(self.running, {taken.id: time.time() + self.lease_s}, xx=True, ch=True) >= 0

    # yield, reclaim, done --------------------------------------------------------------------
    def put_back(self, taken: Taken, checkpoint: str | None, again: bool = False) -> None:
        """A preempted job waits again at its own place in the order, with where it stopped; ``again``: it
        was cut in its run again or its verdict's check, its scan shows the answer (it waits as an improvement,
        live work while its scan is live)."""
        again = again or taken.again
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.running, taken.id)
        pipe.hset(self.job_key(taken.id), mapping={"checkpoint": checkpoint or "", "owner": "",
                                                   "again": "1" if again else ""})
        pipe.hincrby(self.job_key(taken.id), "deliveries", -1)  # a yield is not a failed delivery
        pipe.hincrby(self.job_key(taken.id), "preempted", 1)
        pipe.zadd(self.waiting_of(taken.stage, again), {taken.id: scheduling.waiting_score(taken.queued, taken.stage)})
        pipe.execute()

    def reclaim(self) -> int:
        """Jobs whose lease ran out (their worker died or hung) wait again; returns how many."""
        expired = self.redis.zrangebyscore(self.running, "-inf", time.time())
        moved = 0
        for member in expired:
            job_id = member.decode()
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(self.running)
                    score = pipe.zscore(self.running, job_id)
                    queued, stage, again = pipe.hmget(self.job_key(job_id), "queued", "stage", "again")
                    if score is None or score > time.time():
                        continue  # renewed or taken back meanwhile
                    pipe.multi()
                    pipe.zrem(self.running, job_id)
                    pipe.hset(self.job_key(job_id), "owner", "")
                    stage = stage.decode() if stage else scheduling.REFINED
                    score = scheduling.waiting_score(float(queued or time.time()), stage)
                    pipe.zadd(self.waiting_of(stage, again == b"1"), {job_id: score})
                    pipe.execute()
                    moved += 1
                    log.warning("refine job %s: its worker's lease ran out; it waits again", job_id)
                except redis.WatchError:
                    continue
        return moved

    def done(self, job_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.running, job_id)
        pipe.zrem(self.waiting, job_id)
        pipe.zrem(self.waiting_improving, job_id)
        pipe.delete(self.job_key(job_id))
        pipe.execute()

    def bury(self, taken: Taken, reason: str) -> None:
        log.error("refine job %s (scan %s): %s; dead-lettered", taken.id, taken.scan, reason)
        self.redis.xadd(self.keys.dead_letters, {"scan": taken.scan, "stream": self.stream, "job": taken.id},
                        maxlen=10000)
        if self.on_dead:
            self.on_dead({b"scan": taken.scan.encode()}, reason)
        self.done(taken.id)

    # what waits ---------------------------------------------------------------------------
    def waiting_jobs(self) -> list[scheduling.Job]:
        members = [(m, s) for m, s in self.redis.zrange(self.waiting, 0, -1, withscores=True)]
        members += [(m, s) for m, s in self.redis.zrange(self.waiting_improving, 0, -1, withscores=True)]
        pipe = self.redis.pipeline(transaction=False)
        for member, _ in members:
            pipe.hmget(self.job_key(member.decode()), "voxels", "stage", "again", "queued")
        details = pipe.execute()
        return [scheduling.Job(m.decode(), float(d[3] or s), int(d[0] or 32**3), (d[1] or b"refined").decode(),
                               d[2] == b"1") for (m, s), d in zip(members, details)]

    def running_jobs(self) -> list[scheduling.Job]:
        members = [m.decode() for m in self.redis.zrange(self.running, 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in members:
            pipe.hmget(self.job_key(job_id), "voxels", "queued", "stage", "again")
        return [scheduling.Job(j, float(d[1] or 0), int(d[0] or 32**3), (d[2] or b"refined").decode(), d[3] == b"1")
                for j, d in zip(members, pipe.execute())]

    def scan_of(self, job_ids: list[str]) -> dict[str, str]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.job_key(job_id), "scan")
        return {j: s.decode() for j, s in zip(job_ids, pipe.execute()) if s}
