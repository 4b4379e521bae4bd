"""The refinement backlog's inputs: jobs on the refine stream with their cost in voxels, the moving
average of refinement speed their ETAs are made of, and jobs that died (``shared.state.scheduling`` orders
the jobs; this module only puts them there)."""

from __future__ import annotations

import json
import time

import numpy as np

from shared.state.scheduling import DEFAULT_S_PER_VOXEL


class Backlog:
    """Refinement and full-grid jobs, refinement speed, dead-lettered jobs.
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

    def queue_refinement(self, scan: str, record: dict, options: dict | None = None, pipe=None,
                         queued: float | None = None) -> None:
        """Ask for a scan's refined stage: one entry on the refine stream (the backlog admits it and
        ``shared.state.scheduling`` orders it), with its cost in refined voxels for the queue's ETA."""
        frames = max(32, int(record.get("frames_expected") or 32))
        shape = [frames] + [max(32, int(n)) for n in (record.get("shape") or [32, 32])]
        voxels = int(np.prod([min(n, self.settings.refine_size) for n in shape]))
        fields = {"scan": scan, "queued": queued or time.time(), "voxels": voxels}
        if options:
            fields["options"] = json.dumps(options)
        (self.redis if pipe is None else pipe).xadd(self.keys.refine_jobs, fields)

    def queue_full_grid(self, scan: str, voxels: int, queued: float | None = None, pipe=None) -> None:
        """Ask for a scan's full-grid stage (after its refined result): the lowest-priority refinement work."""
        (self.redis if pipe is None else pipe).xadd(
            self.keys.refine_jobs, {"scan": scan, "queued": queued or time.time(), "voxels": voxels, "stage": "full"})

    def record_refine_speed(self, seconds_per_voxel: float) -> None:
        """A moving average of refinement seconds per refined voxel (what queue ETAs are made of)."""
        old = self.refine_speed(default=seconds_per_voxel)
        self.redis.hset(self.keys.metrics, "refine_s_per_voxel", 0.7 * old + 0.3 * seconds_per_voxel)

    def refine_speed(self, default: float | None = None) -> float:
        value = self.redis.hget(self.keys.metrics, "refine_s_per_voxel")
        return float(value) if value else (default if default is not None else DEFAULT_S_PER_VOXEL)

    def fail_job(self, fields: dict, reason: str) -> None:
        """A dead-lettered job: its scan is marked failed with the reason, visibly, not left stuck."""
        scan = fields.get(b"scan", b"").decode()
        if scan and self.scan(scan) is not None:
            self.update_scan(scan, state="failed", reason=reason)
            self.publish({"event": "failed", "scan": scan, "reason": reason})
        self.count("jobs_dead_lettered")
