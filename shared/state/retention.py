"""Which scans retention may delete, and whether the disk has room for new ones: the policy, pure.

    never     a scan acquiring, queued or running for a stage, or complete but not yet refined
    age       finished scans older than RETENTION_DAYS (0: kept for ever)
    size      then, while DATA_DIR holds more than MAX_DATA_GB (0: no bound), the oldest finished ones
    refuse    new scans while the data volume has less than MIN_FREE_GB free: at their start message,
              with the reason, never frame by frame
"""

from __future__ import annotations

DAY = 86400.0


def deletable(record: dict, busy: set[str]) -> bool:
    """A scan whose data nobody still needs for a result: failed, or refined; not in the backlog."""
    if record["scan"] in busy or record.get("state") == "acquiring":
        return False
    return record.get("state") == "failed" or "result_refined" in record


def choose(records: list[dict], sizes: dict[str, int], busy: set[str], now: float, retention_days: float,
           max_bytes: float, used_bytes: int) -> list[tuple[str, str]]:
    """(scan, why) to delete, oldest first: past the retention age, then while over the size bound."""
    candidates = sorted((r for r in records if deletable(r, busy)), key=lambda r: r.get("started", 0))
    out, freed = [], 0
    for record in candidates:
        age_days = (now - record.get("started", now)) / DAY
        if retention_days and age_days > retention_days:
            out.append((record["scan"], f"older than RETENTION_DAYS={retention_days:g} ({age_days:.1f} days)"))
        elif max_bytes and used_bytes - freed > max_bytes:
            out.append((record["scan"], f"DATA_DIR over MAX_DATA_GB={max_bytes / 2**30:g}"))
        else:
            continue
        freed += sizes.get(record["scan"], 0)
    return out


def low_on_space(free_bytes: int, min_free_gb: float) -> str | None:
    """The reason new scans are refused, or None while there is room."""
    if min_free_gb and free_bytes < min_free_gb * 2**30:
        return f"disk nearly full: {free_bytes / 2**30:.2f} GB free in DATA_DIR, below MIN_FREE_GB={min_free_gb:g}"
    return None
