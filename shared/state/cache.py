"""A cache of recent result arrays in Redis, bounded by RESULT_CACHE_MB: the oldest read go first."""

from __future__ import annotations

import json
import time

import numpy as np

from shared.state import results


class ResultCache:
    """Put and drop cached arrays; eviction runs in Redis (one script).
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

    EVICT = """
    local total = tonumber(redis.call('GET', KEYS[3]) or '0')
    while total > tonumber(ARGV[1]) do
      local oldest = redis.call('ZPOPMIN', KEYS[1])
      if #oldest == 0 then break end
      local size = tonumber(redis.call('HGET', KEYS[2], oldest[1]) or '0')
      redis.call('HDEL', KEYS[2], oldest[1])
      redis.call('DEL', ARGV[2] .. oldest[1])
      total = redis.call('DECRBY', KEYS[3], size)
    end
    return total
    """

    def cache_put(self, scan: str, stage: str, amplitude: np.ndarray, phase: np.ndarray) -> None:
        """Keep recent arrays in Redis for fast reads; the oldest read go when the cache passes its bound."""
        a, p = np.asarray(amplitude, "<f4").tobytes(), np.asarray(phase, "<f4").tobytes()
        size, member, k = len(a) + len(p), f"{scan}:{stage}", self.keys
        if size > self.settings.result_cache_mb * 2**20 or stage == "full":
            return  # larger than the whole cache, or a full-grid answer (detector-size, read rarely): from its file
        old = int(self.redis.hget(k.cache_sizes, member) or 0)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(k.cached(scan, stage), mapping={"amplitude": a, "phase": p, "shape": json.dumps(list(amplitude.shape))})
        pipe.zadd(k.cache_index, {member: time.time()})
        pipe.hset(k.cache_sizes, member, size)
        pipe.incrby(k.cache_bytes, size - old)
        pipe.execute()
        self.redis.eval(self.EVICT, 3, k.cache_index, k.cache_sizes, k.cache_bytes,
                        self.settings.result_cache_mb * 2**20, f"{k.cache_prefix}")

    def cache_drop(self, scan: str, pipe) -> None:
        for stage in results.STAGES:
            member = f"{scan}:{stage}"
            pipe.eval("""local size = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
                         redis.call('HDEL', KEYS[2], ARGV[1]); redis.call('ZREM', KEYS[1], ARGV[1])
                         redis.call('DEL', KEYS[4]); redis.call('DECRBY', KEYS[3], size)""",
                      4, self.keys.cache_index, self.keys.cache_sizes, self.keys.cache_bytes,
                      self.keys.cached(scan, stage), member)
