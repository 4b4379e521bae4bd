"""Each stage's result: the arrays live in DATA_DIR/<scan>/<stage>.h5 (``shared.state.results``); Redis holds
each result's info (a few hundred bytes) and, through ``shared.state.cache``, recent arrays."""

from __future__ import annotations

import json
import time

import numpy as np

from shared.state import results


class StageResults:
    """Write a stage's result (file first, then the record), read it back (cache, else file).
    Part of ``Store``: uses its ``redis``, ``keys`` and ``settings``."""

    def put_result(self, scan: str, stage: str, amplitude: np.ndarray, phase: np.ndarray, info: dict,
                   force: bool = False, extra: dict[str, np.ndarray] | None = None) -> bool:
        """Store a stage's arrays unless a result from more frames is already there (``force``: a re-run):
        the file first (atomically), then the record says the stage exists. ``extra``: further arrays kept
        in the file only (``result_array``)."""
        key = self.keys.result(scan, stage)
        existing = self.redis.hget(key, "info")
        if not force and existing and json.loads(existing).get("seq", -1) > info.get("seq", 0):
            return False
        path = results.stage_path(self.settings.data_dir, scan, stage)
        proposal = self.redis.hget(self.keys.scan(scan), "proposal")
        results.write_stage(path, scan, stage, amplitude, phase, info, extra,
                            self.proposal_of({"proposal": json.loads(proposal) if proposal else None}))
        self.redis.hset(key, mapping={"info": json.dumps(info), "file": str(path)})
        self.cache_put(scan, stage, amplitude, phase)
        summary = results.summary_of(info)
        self.update_scan(scan, **{f"result_{stage}": summary})
        self.publish({"event": "result", "scan": scan, "stage": stage, **summary})
        return True

    def result(self, scan: str, stage: str):
        """(amplitude, phase, info) from the cache, else from the stage's file (then cached); None if the
        stage does not exist."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.cached(scan, stage), "amplitude", "phase", "shape")
        pipe.hget(self.keys.result(scan, stage), "info")
        (amplitude, phase, shape), info = pipe.execute()
        if amplitude is not None and info is not None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.keys.cache_index, {f"{scan}:{stage}": time.time()}, xx=True)
            pipe.hincrby(self.keys.metrics, "cache_hits", 1)
            pipe.execute()
            shape = json.loads(shape)
            return (np.frombuffer(amplitude, "<f4").reshape(shape), np.frombuffer(phase, "<f4").reshape(shape),
                    json.loads(info))
        stored = results.read_stage(results.stage_path(self.settings.data_dir, scan, stage))
        if stored is None:
            return None
        amplitude, phase, file_info = stored
        if info is None:  # Redis lost it (emptied, restarted): the file is the record
            self.redis.hset(self.keys.result(scan, stage), mapping={"info": json.dumps(file_info)})
        self.count("cache_misses")
        self.cache_put(scan, stage, amplitude, phase)
        return amplitude, phase, json.loads(info) if info is not None else file_info

    def result_array(self, scan: str, stage: str, name: str) -> np.ndarray | None:
        """A further array of a stage's result (e.g. ``phase_uncertainty``), from its file."""
        return results.read_dataset(results.stage_path(self.settings.data_dir, scan, stage), name)

    def result_complex(self, scan: str, stage: str, name: str) -> np.ndarray | None:
        """A further complex array of a stage's result (kept by ``results.complex_datasets``), from its file."""
        return results.read_complex(results.stage_path(self.settings.data_dir, scan, stage), name)
