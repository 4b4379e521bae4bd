"""A beamtime's load through `cdi-live up` at default settings: is the scan being taken now still live?

    burst      5 replays of the recorded APS scan 54 (201 frames of 256², with its geometry), back to back
    live       then 3 simulated 32³ scans at 10 frames/s, one after the other
    restart    (--restart) the burst, `cdi-live up` stopped while its backlog is refining, started again,
               then the 3 live scans: the backlog left in Redis must not hold them up
    full-grid  (--after-first-answers) the burst, then the 3 live scans once every burst scan shows its
               refined answer: the worker is busy with the burst's full-grid stages (minutes each), which
               must not hold up a live scan's run again

Reports, per variant: end → refined for each live scan (its first refined answer; where a run again then
searches on, end → settled: the answer that replaces it), previews seen while it was acquired, the time
to drain the whole backlog, scans lost, the longest wait between previews during a live scan. Targets
(issue 21): live end → refined ≤ 2 s median, a preview during every live scan, 0 lost, backlog drained;
(issue 33): a preview at least every 2 s during each live scan.

Live scans shorter than their refinement and verdict's check (``--live-hz``) are cut short by the next scan's end,
and wait where the scheduling policy puts them (end → settled; each live scan's ``timeline`` in --json). The third
live scan (seed 702) is the one whose answer is checked on resamples: ``--live 4 --live-hz 15`` ends a fourth
during that check.

    .venv/bin/python benchmarks/beamtime_load.py [--restart | --after-first-answers] [--live N] [--live-hz HZ]
                                                 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import redis  # noqa: E402

from benchmarks.scale_out import free_port  # noqa: E402
from services.beamline.sim import GEOMETRY_34IDC, Beamline, simulated_volume  # noqa: E402
from services.cli.up import wait_until_ready  # noqa: E402
from shared.wire import realdata  # noqa: E402

BURST, LIVE, LIVE_HZ = 5, 3, 10.0


class Events(threading.Thread):
    """Every event of the deployment with its arrival time (wall clock)."""

    def __init__(self, client, prefix):
        super().__init__(daemon=True)
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(f"{prefix}:updates")
        self.seen: list[tuple[float, dict]] = []

    def run(self):
        for message in self.pubsub.listen():
            if message["type"] == "message":
                self.seen.append((time.time(), json.loads(message["data"])))

    def of(self, scan, event=None, stage=None):
        return [(t, e) for t, e in list(self.seen) if e.get("scan") == scan and (event is None or e["event"] == event)
                and (stage is None or e.get("stage") == stage)]


def stage_times(events: Events, scan: str, end: float, timeout: float = 900) -> dict:
    """Seconds from ``end`` to a scan's last preview, refined and full-grid results, and their χ (waits for
    the full grid)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not events.of(scan, "result", "full"):
        time.sleep(0.5)
    out = {}
    for stage in ("nn", "refined", "full"):
        seen = events.of(scan, "result", stage)
        out[f"end_to_{stage}_s"] = round(seen[-1][0] - end, 2) if seen else None
        out[f"chi_{stage}"] = round(seen[-1][1]["chi"], 4) if seen else None
    return out


class Deployment:
    def __init__(self, prefix, port, zport):
        self.prefix, self.port, self.zport = prefix, port, zport
        self.env = {**os.environ, "KEY_PREFIX": prefix, "DATA_DIR": f"/tmp/{prefix}"}

    def start(self):
        self.process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "up", "--port", str(self.port),
                                         "--bind", f"tcp://127.0.0.1:{self.zport}"], env=self.env,
                                        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_ready(f"http://127.0.0.1:{self.port}", [self.process])

    def stop(self):
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(60)


def burst(beamline, volume):
    for i in range(BURST):
        beamline.play(f"s54-{i}", volume, geometry=GEOMETRY_34IDC)


def live_scans(beamline, tag):
    ends = {}
    for i in range(LIVE):
        scan = f"live-{tag}-{i}"
        beamline.play(scan, simulated_volume(32, 5, 700 + i, 1e7), rate_hz=LIVE_HZ)
        ends[scan] = time.time()
    return ends


def measure(events, ends, scans, started, timeout=900):
    deadline = time.time() + timeout
    def settled(scan):  # the refined answer that no run again will replace
        return [t for t, e in events.of(scan, "result", "refined") if not e.get("searching")]

    while time.time() < deadline and not all(settled(s) for s in scans):
        time.sleep(0.5)
    refined = {s: events.of(s, "result", "refined")[0][0] for s in scans if events.of(s, "result", "refined")}
    final = {s: settled(s)[0] for s in scans if settled(s)}
    live = {}
    for scan, end in ends.items():
        begun = events.of(scan, "start")[0][0] if events.of(scan, "start") else end - 32 / LIVE_HZ
        during = [(t, e) for t, e in events.of(scan, "result", "nn") if begun <= t <= end and e["frames_used"] < 32]
        previews = [e for _, e in during]
        moments = [begun, *(t for t, _ in during), end]  # the operator's longest wait for a fresher preview
        finals = [t for t, e in events.of(scan, "result", "nn") if e["frames_used"] == 32]
        refining = events.of(scan, "refining")
        live[scan] = {"end_to_refined_s": refined[scan] - end if scan in refined else None,
                      "end_to_settled_s": final[scan] - end if scan in final else None,
                      "end_to_final_nn_s": finals[0] - end if finals else None,
                      "end_to_refining_s": refining[0][0] - end if refining else None,
                      "previews_during_acquisition": len(previews),
                      "longest_gap_between_previews_s": float(np.max(np.diff(moments))),
                      "preview_frames_used": [e["frames_used"] for e in previews],
                      "timeline": [(round(t - end, 2), e["event"], e.get("phase") or e.get("stage"),  # after its end
                                    "checking" if e.get("checking") else "searching" if e.get("searching") else "",
                                    round(e["seconds"], 2) if e.get("seconds") is not None else None)  # its phases' time
                                   for t, e in events.of(scan) if t >= end and e["event"] in ("refining", "preempted")
                                   or e["event"] == "result" and e.get("stage") == "refined"]}
    done = [t for t in final.values()]
    return {"live": live,
            "live_end_to_refined_median_s": float(np.median([v["end_to_refined_s"] for v in live.values()
                                                             if v["end_to_refined_s"] is not None] or [np.nan])),
            "live_end_to_settled_median_s": float(np.median([v["end_to_settled_s"] for v in live.values()
                                                             if v["end_to_settled_s"] is not None] or [np.nan])),
            "live_scans_with_a_preview": sum(v["previews_during_acquisition"] > 0 for v in live.values()),
            "longest_gap_between_previews_s": max(v["longest_gap_between_previews_s"] for v in live.values()),
            "backlog_drained_s": (max(done) - started) if len(done) == len(scans) else None,
            "lost": len(scans) - len(refined)}


def run(restart: bool, after_first_answers: bool = False, timeout: float = 900) -> dict:
    prefix = f"load{uuid.uuid4().hex[:6]}"
    deployment = Deployment(prefix, free_port(), free_port())
    client = redis.Redis()
    events = Events(client, prefix)
    events.start()
    volume = realdata.scan54_frames(None)
    try:
        deployment.start()
        beamline = Beamline(f"tcp://127.0.0.1:{deployment.zport}")
        started = time.time()
        burst(beamline, volume)
        restarted = None
        if restart:  # wait until the backlog is refining, then restart the whole service
            while not events.of("s54-0", "refining"):
                time.sleep(0.2)
            time.sleep(5)
            deployment.stop()
            restarted = time.time()
            deployment.start()
            restarted = time.time() - restarted
            beamline.close()
            beamline = Beamline(f"tcp://127.0.0.1:{deployment.zport}")
        if after_first_answers:  # the burst's refined answers are in: its full-grid stages are what runs
            while not all(events.of(f"s54-{i}", "result", "refined") for i in range(BURST)):
                time.sleep(0.2)
        ends = live_scans(beamline, "r" if restart else "f" if after_first_answers else "a")
        beamline.close()
        scans = [f"s54-{i}" for i in range(BURST)] + list(ends)
        result = measure(events, ends, scans, started, timeout)
        counters = {k.decode(): float(v) for k, v in client.hgetall(f"{prefix}:metrics").items()}
        result.update(variant="restart" if restart else "full-grid" if after_first_answers else "burst", live_hz=LIVE_HZ,
                      restart_s=restarted,
                      preempted=counters.get("jobs_preempted", 0), previews_skipped=counters.get("jobs_skipped_stale", 0),
                      previews_not_asked={k: counters.get(f"previews_skipped_{k}", 0)
                                          for k in ("busy", "backpressure", "ending")})
        return result
    finally:
        deployment.stop()
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def main():
    global LIVE_HZ, LIVE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restart", action="store_true", help="also the restart variant")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only-restart", action="store_true", help="the restart variant alone")
    parser.add_argument("--after-first-answers", action="store_true",
                        help="the full-grid variant alone: live scans while the burst's full-grid stages run")
    parser.add_argument("--live", type=int, default=LIVE, help="how many live scans")
    parser.add_argument("--live-hz", type=float, default=LIVE_HZ, help="the live scans' frames per second")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for every answer to settle")
    args = parser.parse_args()
    LIVE_HZ, LIVE = args.live_hz, args.live
    if args.after_first_answers:
        results = [run(False, True, args.timeout)]
    else:
        results = (([] if args.only_restart else [run(False, timeout=args.timeout)])
                   + ([run(True, timeout=args.timeout)] if args.restart or args.only_restart else []))
    for r in results:
        each = ", ".join(f"{v['end_to_refined_s']:.2f}" for v in r["live"].values() if v["end_to_refined_s"])
        settled = ", ".join(f"{v['end_to_settled_s']:.2f}" for v in r["live"].values() if v["end_to_settled_s"])
        print(f"{r['variant']}: live end → refined median {r['live_end_to_refined_median_s']:.2f} s ({each}); "
              f"→ settled median {r['live_end_to_settled_median_s']:.2f} s ({settled}); "
              f"live scans with a preview {r['live_scans_with_a_preview']}/{LIVE} (longest wait for a fresher one "
              f"{r['longest_gap_between_previews_s']:.1f} s); backlog drained in "
              f"{r['backlog_drained_s'] or float('nan'):.0f} s; lost {r['lost']}; preempted {r['preempted']:.0f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
