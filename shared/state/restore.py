"""Redis emptied: scan records and result infos rebuilt from the files in DATA_DIR, unfinished work queued again."""

from __future__ import annotations

import json

import numpy as np

from shared.state import results


class Restore:
    """Rebuild what Redis lost from the files.
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

    def restore_from_disk(self) -> dict:
        """Every scan in DATA_DIR that Redis does not list gets its record and result infos back from its
        files (``shared.state.results``); nothing is recomputed: a complete scan with an NN result but no refined
        one is queued for refinement, as it was; a binned refined one with no full-grid result is queued
        for its full-grid stage. Returns counts."""
        restored = queued = 0
        for raw in sorted(self.settings.data_dir.glob("*/frames.h5")):
            scan = raw.parent.name
            if self.redis.zscore(self.keys.scans, scan) is not None:
                continue  # listed; a record hash alone may be a worker's late field written after the loss
            rebuilt = results.record_from_files(raw.parent)
            if rebuilt is None:
                continue
            record, infos = rebuilt
            pipe = self.redis.pipeline(transaction=False)
            self.write_scan(scan, record, record["started"], pipe)
            for stage, info in infos.items():
                pipe.hset(self.keys.result(scan, stage), mapping={"info": json.dumps(info)})
            if record["state"] == "complete" and "result_nn" in record and "result_refined" not in record:
                # queued as of its end: behind every scan newer than it (shared.state.scheduling)
                self.queue_refinement(scan, record, pipe=pipe, queued=record.get("ended") or record["started"])
                queued += 1
            elif (refined := infos.get("refined", {})).get("downsampled") and "region" in refined \
                    and "full" not in infos and self.settings.full_grid:
                self.queue_full_grid(scan, int(np.prod(refined["region"]["shape"])),
                                     record.get("ended") or record["started"], pipe)
                queued += 1
            elif record["state"] == "complete" and "result_nn" not in record:
                reason = "its network input was lost with Redis's state before inference (frames kept on disk)"
                self.update_scan(scan, pipe, state="failed", reason=reason)
            pipe.execute()
            restored += 1
        return {"restored": restored, "queued": queued}
