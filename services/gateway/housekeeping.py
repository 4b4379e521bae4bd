"""The gateway's housekeeping thread: Redis restored from DATA_DIR when emptied, disk watched, retention.

Every gateway process runs it; a Redis lock makes one do each round. Rounds:
    every 2 s    Redis lost its index (the ``restored`` marker is gone: emptied or restarted without
                 persistence) → every scan's record rebuilt from its files (``Store.restore_from_disk``)
    every 30 s   DATA_DIR's size and the volume's free space → Redis (``/metrics``, the page, ``/ready``);
                 retention (``shared.state.retention``): what it deletes is logged, counted and announced
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import redis

from shared.state import retention
from shared.state.store import Store

log = logging.getLogger("cdi-live.housekeeping")

RESTORE_EVERY_S, DISK_EVERY_S = 2.0, 30.0


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def disk_state(store: Store) -> dict:
    """Sizes now: DATA_DIR's bytes per scan and in all, the volume's free and total bytes."""
    data_dir = store.settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    sizes = {p.name: folder_bytes(p) for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    usage = shutil.disk_usage(data_dir)
    return {"sizes": sizes, "data_bytes": sum(sizes.values()), "free_bytes": usage.free, "total_bytes": usage.total,
            "checked": time.time()}


class Housekeeping(threading.Thread):
    def __init__(self, store: Store, stop: threading.Event | None = None):
        super().__init__(daemon=True, name="housekeeping")
        self.store, self.stop = store, stop or threading.Event()
        self.last_disk = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.round()
            except redis.RedisError as exc:
                log.warning("housekeeping: Redis unavailable (%s)", exc)
            except Exception:  # never the gateway's end
                log.exception("housekeeping round failed")
            self.stop.wait(RESTORE_EVERY_S)

    def round(self) -> None:
        keys, client = self.store.keys, self.store.redis
        if not client.exists(keys.restored) and client.set(keys.restoring, 1, nx=True, ex=120):
            try:
                counts = self.store.restore_from_disk()
                client.set(keys.restored, json.dumps({**counts, "at": time.time()}))
                if counts["restored"]:
                    log.warning("Redis had lost %d scan record(s): rebuilt from DATA_DIR (%d refinement(s) "
                                "queued again)", counts["restored"], counts["queued"])
                    self.store.count("scans_restored", counts["restored"])
            finally:
                client.delete(keys.restoring)
        if time.monotonic() - self.last_disk > DISK_EVERY_S and client.set(keys.disk_lock, 1, nx=True, ex=25):
            self.last_disk = time.monotonic()
            self.watch_disk()

    def watch_disk(self) -> None:
        store = self.store
        state = disk_state(store)
        deleted = self.apply_retention(state)
        if deleted:
            state = disk_state(store)
        store.redis.hset(store.keys.disk, mapping={k: v for k, v in state.items() if k != "sizes"})

    def apply_retention(self, state: dict) -> list[str]:
        settings, store = self.store.settings, self.store
        if not (settings.retention_days or settings.max_data_gb):
            return []
        records, _ = store.list_scans(None, 1_000_000, 0)
        busy = {r["scan"] for r in records if r.get("queue") or r.get("refining")}  # waiting for or in a stage
        chosen = retention.choose(records, state["sizes"], busy, time.time(), settings.retention_days,
                                  settings.max_data_gb * 2**30, state["data_bytes"])
        for scan, why in chosen:
            store.delete_scan(scan, reason=f"retention: {why}")
            folder = (settings.data_dir / scan).resolve()
            if settings.data_dir.resolve() in folder.parents:
                shutil.rmtree(folder, ignore_errors=True)
            store.count("scans_deleted_by_retention")
            log.warning("retention deleted scan %s (%s)", scan, why)
        return [scan for scan, _ in chosen]
