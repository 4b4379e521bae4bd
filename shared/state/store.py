"""The service's state in Redis, one facade over one small module per thing it keeps:

    records        scan records, their index and version      (``shared.state.records``)
    stage_results  each stage's result: file first, then record (``shared.state.stage_results``)
    cache          recent result arrays, bounded               (``shared.state.cache``)
    backlog        refinement jobs, refinement speed, dead jobs (``shared.state.backlog``)
    liveness       workers' heartbeats                         (``shared.state.liveness``)
    counters       counts and latency sums                     (``shared.state.counters``)
    events         live updates (pub/sub)                      (``shared.state.events``)
    snapshot       what /metrics reads, in one round trip      (``shared.state.snapshot``)
    restore        what Redis lost, rebuilt from the files     (``shared.state.restore``)

Raw frames and every stage's result live in HDF5 files in DATA_DIR (``shared.state.results``); Redis holds
state, jobs, the scan index and a size-bounded cache of recent result arrays (RESULT_CACHE_MB). Only these
modules know the Redis layouts (key names: ``shared.state.settings.keys``).
"""

from __future__ import annotations

import redis

from shared.state.backlog import Backlog
from shared.state.cache import ResultCache
from shared.state.counters import Counters
from shared.state.events import Events
from shared.state.liveness import Liveness
from shared.state.records import Records
from shared.state.restore import Restore
from shared.state.settings import Settings, keys
from shared.state.snapshot import Snapshot
from shared.state.stage_results import StageResults


class Store(Records, StageResults, ResultCache, Backlog, Liveness, Counters, Events, Snapshot, Restore):
    """One Redis connection, the settings and the key names, shared by every part."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.settings = settings
        self.keys = keys(settings)
        self.redis = client or redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                                    health_check_interval=30, retry_on_timeout=True)
