"""Full resolution (issue 25): the full-grid stage on real detector-size data, χ against the measured frames.

Cases, each in its own process (peak memory is the process's), default settings as `cdi-live reconstruct
--refine` runs them:

    scan54      APS 34-ID-C scan 54 (201×256×256 raw counts): NN → refined (binned) → full grid
    calibrated  scan 54 with its detector's whitefield and bad-pixel map (deploy/calibration/aps-34idc-tim2), as
                `reconstruct --whitefield … --mask …` reads them
    offcentre   the same frames off-centre on a 512×384 detector, zeros elsewhere
    paper       the paper's 64³ example (its magnitude squared): no full-grid stage (≤ --refine-size)
    service     scan 54 played through `cdi-live up` (defaults; then FULL_GRID=false, the binned stage alone,
                as the baseline): seconds from the scan's end to the refined and the full-grid result
    erhio       the yardstick on scan 54's full grid, same run: plain ER/HIO, 1 start (box support of half
                the array, random phase, shrink-wrap every 20, σ 1, threshold 0.1), the paper's schedule
                3*(20*ER+180*HIO)+20*ER; χ of every iterate and of the final (averaged) answer

Reports χ against the frames and seconds per stage, χ against time for the full-grid stage and for
ER/HIO, the region, and peak memory (and per 10⁷ voxels). Writes docs/full-grid/results.json and
docs/full-grid/chi_vs_time.png.

    .venv/bin/python benchmarks/full_grid.py [--cases scan54,calibrated,offcentre,paper,service,erhio]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from shared.wire import realdata  # noqa: E402

OUT = ROOT / "docs" / "full-grid"


def scan54() -> np.ndarray:
    return realdata.scan54_frames()


def run_case(name: str) -> dict:
    from shared.physics import metrics, phasing

    if name == "erhio":
        intensity = scan54()
        history, began = [], time.perf_counter()
        objects, _, _ = phasing.phase_retrieve(intensity[None], phasing.PAPER_SCHEDULE, starts=1, seed=0,
                                               history=history)
        seconds = time.perf_counter() - began
        return {"chi": metrics.chi(objects[0], intensity), "seconds": seconds,
                "times": [round(t - began, 2) for t, _ in history[::5]],
                "chi_iterates": [round(float(c[0]), 4) for _, c in history[::5]],
                "note": "χ of the iterates is plain (no best scale) and, during HIO, of the iterate outside the "
                        "support too; the final χ is the averaged answer's, best scale, like every other χ here"}
    from shared.nn.inference import Predictor
    from shared.solver.stages import reconstruct

    if name == "paper":
        intensity = realdata.paper_intensity()
    else:
        intensity = scan54()
        if name == "offcentre":
            big = np.zeros((201, 512, 384), np.float32)
            big[:, 200:456, 90:346] = intensity
            intensity = big
    measured = counts = None
    if name == "calibrated":
        from shared.wire import detector

        flat, pixels = detector.shipped_calibration()
        measured = np.broadcast_to(pixels, intensity.shape)
        counts, intensity = intensity, detector.corrected(intensity, None, flat)
    predictor = Predictor()
    began = time.perf_counter()
    stages = reconstruct(intensity[None], predictor, refine=True, measured=None if measured is None else measured[None],
                         counts=None if counts is None else counts[None])
    total = time.perf_counter() - began
    out = {"input": list(intensity.shape), "seconds_total": total,
           "stages": {k: {"chi": float(s.chi[0]), "seconds": s.seconds,
                          **({key: s.info[key][0] for key in ("verdict", "verdict_reason", "chi_free", "chi_free_floor")
                              if key in s.info})}
                      for k, s in stages.items()}}
    refined = stages["refined"]
    out.update(region=refined.info["region"][0]["shape"], grid=refined.info["grid"],
               chi_refinement_grid=refined.info["chi_refinement_grid"][0], chi_floor=refined.info["chi_floor"][0])
    if "full" in stages:
        fit = stages["full"].info["fit"][0]
        start = stages["nn"].seconds + refined.seconds
        out["full"] = {"iterations": fit["iterations"], "fit_seconds": fit["seconds"], "device": fit["device"],
                       "times": [round(start + t, 2) for t in fit["time_history"]], "chi_iterates": fit["chi_history"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="scan54,calibrated,offcentre,paper,service,erhio")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.case:
        result = run_case(args.case)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print("RESULT " + json.dumps(result))
        return
    if not realdata.scan54_file().exists():
        sys.exit(f"needs the real data in {realdata.folder()}")
    results = {}
    for case in args.cases.split(","):
        if case == "service":
            results[case] = {"full_grid": through_the_service(True), "binned_only": through_the_service(False)}
            print(case, json.dumps(results[case]), flush=True)
            continue
        done = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{case} failed:\n{done.stderr[-3000:]}")
        results[case] = json.loads(line[len("RESULT "):])
        print(case, json.dumps({k: v for k, v in results[case].items() if k not in ("full", "times", "chi_iterates")}),
              flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    if "scan54" in results and "offcentre" in results:
        a, b = results["scan54"], results["offcentre"]
        results["offcentre_vs_scan54"] = {
            "chi_difference": b["stages"]["full"]["chi"] - a["stages"]["full"]["chi"],
            "time_ratio": b["seconds_total"] / a["seconds_total"]}
    if "scan54" in results and "offcentre" in results:  # the same region, more input voxels: the slope
        a, b = results["scan54"], results["offcentre"]
        results["memory_gb_per_1e7_input_voxels"] = (b["peak_rss_gb"] - a["peak_rss_gb"]) / (
            np.prod(b["input"]) - np.prod(a["input"])) * 1e7
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    plot(results)
    print(json.dumps({k: v for k, v in results.items() if k in ("offcentre_vs_scan54", "memory_gb_per_1e7_input_voxels")}))


def through_the_service(full_grid: bool) -> dict:
    """Scan 54 through `cdi-live up` at its defaults: seconds from its end to each result."""
    import uuid

    import redis

    from benchmarks.beamtime_load import Deployment, Events
    from benchmarks.scale_out import free_port
    from services.beamline.sim import GEOMETRY_34IDC, Beamline

    prefix = f"full{uuid.uuid4().hex[:6]}"
    deployment = Deployment(prefix, free_port(), free_port())
    deployment.env["FULL_GRID"] = "true" if full_grid else "false"
    events = Events(redis.Redis(), prefix)
    events.start()
    try:
        deployment.start()
        beamline = Beamline(f"tcp://127.0.0.1:{deployment.zport}")
        beamline.play("s54", realdata.scan54_frames(None), geometry=GEOMETRY_34IDC)
        end = time.time()
        beamline.close()
        wanted = ["refined", "full"] if full_grid else ["refined"]
        deadline = time.time() + 900
        while time.time() < deadline and not all(events.of("s54", "result", s) for s in wanted):
            time.sleep(0.5)
        out = {}
        for stage in wanted:
            seen = events.of("s54", "result", stage)
            out[f"end_to_{stage}_s"] = seen[0][0] - end if seen else None
            out[f"chi_{stage}"] = seen[0][1]["chi"] if seen else None
        return out
    finally:
        deployment.stop()


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    if "scan54" in results and "full" in results["scan54"]:
        r = results["scan54"]
        ax.plot(r["full"]["times"], r["full"]["chi_iterates"], label="full-grid stage (from the refined answer)")
        start = r["stages"]["nn"]["seconds"] + r["stages"]["refined"]["seconds"]
        ax.plot([start], [r["stages"]["refined"]["chi"]], "o", label="refined stage (binned), placed back")
        ax.axhline(r["chi_floor"], color="grey", ls=":", label=f"Poisson floor {r['chi_floor']:.3f}")
    if "erhio" in results:
        e = results["erhio"]
        ax.plot(e["times"], e["chi_iterates"], alpha=0.6, label="ER/HIO, 1 start, full grid (iterates)")
        ax.plot([e["seconds"]], [e["chi"]], "s", label=f"ER/HIO answer: χ {e['chi']:.3f}")
    ax.axhline(0.13, color="red", ls="--", lw=0.8, label="target 0.13")
    ax.set_xlabel("seconds (2 cores)")
    ax.set_ylabel("χ against the measured frames")
    ax.set_ylim(0.1, 0.6)
    ax.set_title("APS scan 54, 201×256×256")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "chi_vs_time.png", dpi=110)


if __name__ == "__main__":
    main()
