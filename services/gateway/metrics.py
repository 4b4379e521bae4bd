"""Prometheus /metrics, read from Redis at scrape time, so every gateway replica reports the same figures."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily


COUNTERS = {  # Redis counter → (metric, help)
    "frames_in": ("cdi_frames_in", "frames accepted by the ingest"),
    "duplicates": ("cdi_duplicate_frames", "frames received twice (the first copy is kept)"),
    "scans_started": ("cdi_scans_started", "scans started"),
    "jobs_skipped_stale": ("cdi_jobs_skipped_stale", "preview jobs skipped because a newer one was queued"),
    "previews_cut": ("cdi_previews_cut", "previews cut short because their scan ended (its final answer went first)"),
    "jobs_failed": ("cdi_jobs_failed", "jobs that ended in an error"),
    "scans_converged_early": ("cdi_scans_converged_early", "scans marked converged before their last frame"),
    "jobs_dead_lettered": ("cdi_jobs_dead_lettered", "jobs moved to the dead-letter stream"),
    "saturated_pixels": ("cdi_saturated_pixels", "saturated pixel readings in scans' regions of interest (per scan: "
                         "the record's detector.saturated_pixels)"),
    "scans_flagged": ("cdi_scans_flagged", "scans whose Bragg peak sits on a gap or saturated pixels"),
    "scans_restored": ("cdi_scans_restored", "scan records rebuilt from DATA_DIR after Redis lost them"),
    "scans_deleted_by_retention": ("cdi_scans_deleted_by_retention", "scans deleted by retention (RETENTION_DAYS, "
                                   "MAX_DATA_GB)"),
    "pva_frames_dropped": ("cdi_pva_frames_dropped", "pvAccess frames lost on the way (gaps in uniqueId)"),
    "pva_overruns": ("cdi_pva_overruns", "pvAccess monitor overruns (updates merged: frames lost)"),
    "pva_disconnects": ("cdi_pva_disconnects", "times the pvAccess server went away (the ingest reconnects)"),
    "jobs_preempted": ("cdi_jobs_preempted", "refinements that yielded to a fresher scan (each resumes later)"),
}


class SnapshotCollector:
    def __init__(self, snapshot: dict):
        self.snapshot = snapshot

    def collect(self):
        snapshot = self.snapshot
        counters = snapshot["counters"]
        for name, (metric, text) in COUNTERS.items():
            yield CounterMetricFamily(metric, text, value=counters.get(name, 0))
        rejected = CounterMetricFamily("cdi_messages_rejected", "messages dropped by the ingest", labels=["reason"])
        for name, value in counters.items():
            if name.startswith("rejected:"):
                rejected.add_metric([name.split(":", 1)[1]], value)
        yield rejected
        results = CounterMetricFamily("cdi_results", "results stored", labels=["stage"])
        latency = SummaryMetricFamily("cdi_job_latency_seconds", "from job queued to result stored", labels=["stage"])
        for stage in ("nn", "refined", "full"):
            results.add_metric([stage], counters.get(f"results_{stage}", 0))
            latency.add_metric([stage], counters.get(f"latency_count:{stage}", 0), counters.get(f"latency_sum:{stage}", 0))
        yield results
        yield latency
        depth = GaugeMetricFamily("cdi_queue_length", "entries in a job stream", labels=["queue"])
        pending = GaugeMetricFamily("cdi_queue_pending", "jobs delivered to a worker, not yet acknowledged",
                                    labels=["queue"])
        for queue in ("infer", "refine", "dead"):
            depth.add_metric([queue], snapshot["length"][queue])
            pending.add_metric([queue], snapshot["pending"][queue])
        yield depth
        yield pending
        workers = GaugeMetricFamily("cdi_workers", "workers with a fresh heartbeat", labels=["kind"])
        for kind, alive in snapshot["workers"].items():
            workers.add_metric([kind], alive)
        yield workers
        yield GaugeMetricFamily("cdi_scans", "scans known", value=snapshot["scans"])
        backlog = GaugeMetricFamily("cdi_backlog_jobs", "jobs waiting or running, per stage", labels=["stage"])
        oldest = GaugeMetricFamily("cdi_backlog_oldest_seconds", "age of the oldest job waiting, per stage",
                                   labels=["stage"])
        for stage, figures in snapshot["backlog"].items():
            backlog.add_metric([stage], figures["jobs"])
            oldest.add_metric([stage], figures["oldest_s"])
        yield backlog
        yield oldest
        cache = snapshot["cache"]
        yield GaugeMetricFamily("cdi_result_cache_bytes", "result arrays cached in Redis (bound: RESULT_CACHE_MB)",
                                value=cache["bytes"])
        yield GaugeMetricFamily("cdi_result_cache_entries", "results cached in Redis", value=cache["entries"])
        yield CounterMetricFamily("cdi_result_cache_hits", "result reads served from the Redis cache", value=cache["hits"])
        yield CounterMetricFamily("cdi_result_cache_misses", "result reads served from their files in DATA_DIR",
                                  value=cache["misses"])
        disk = snapshot["disk"]
        if "data_bytes" in disk:
            yield GaugeMetricFamily("cdi_data_dir_bytes", "bytes in DATA_DIR (raw frames, results)", value=disk["data_bytes"])
            yield GaugeMetricFamily("cdi_data_dir_free_bytes", "free bytes on DATA_DIR's volume", value=disk["free_bytes"])
            yield GaugeMetricFamily("cdi_disk_alarm", "1 while new scans are refused for want of space",
                                    value=1 if disk["alarm"] else 0)


def render(snapshot: dict) -> bytes:
    """Prometheus text of a ``Store.service_snapshot`` (read in one Redis round trip per scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
