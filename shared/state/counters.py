"""Counters in one Redis hash (``keys.metrics``): what /metrics turns into Prometheus counters and summaries."""

from __future__ import annotations


class Counters:
    """Named counts and per-stage latency sums.
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

    def count(self, name: str, amount: int = 1) -> None:
        self.redis.hincrby(self.keys.metrics, name, amount)

    def counters(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.redis.hgetall(self.keys.metrics).items()}

    def record_latency(self, stage: str, seconds: float) -> None:
        """Sum and count per stage: enough for a Prometheus summary of job latency."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrbyfloat(self.keys.metrics, f"latency_sum:{stage}", seconds)
        pipe.hincrby(self.keys.metrics, f"latency_count:{stage}", 1)
        pipe.execute()
