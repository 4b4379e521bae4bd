"""An adaptive rocking scan with ophyd.sim devices and a simulated crystal, against a running cdi-live.

    cdi-live up &                       # or: make demo
    .venv/bin/python docs/early-stop/adaptive_scan.py [--gateway http://127.0.0.1:8000] [--ingest tcp://127.0.0.1:5555]

The RunEngine's documents go to the ingest through CdiLiveCallback; the plan asks the gateway after
every point whether the scan has converged, and stops there. Prints where it stopped.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from bluesky import RunEngine  # noqa: E402
from ophyd.sim import SynAxis, SynSignal  # noqa: E402

from services.beamline.sim import GEOMETRY_34IDC  # noqa: E402
from shared.wire.bluesky import CdiLiveCallback, adaptive_rocking_scan  # noqa: E402
from shared.physics import crystals  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--gateway", default="http://127.0.0.1:8000")
parser.add_argument("--ingest", default="tcp://127.0.0.1:5555")
parser.add_argument("--points", type=int, default=32)
args = parser.parse_args()

# A simulated crystal: its rocking curve, one detector frame per angle (counts, peak 10⁶).
intensity = crystals.simulated_scan(32, 7100, 0, 0, True, (0.0, 0.0))[0]
frames = np.round(intensity / intensity.max() * 1e6).astype(np.uint32)
start, stop = -0.08, 0.08  # degrees of the rocking motor

th = SynAxis(name="th")
image = SynSignal(name="image", func=lambda: frames[int(np.clip(round((th.readback.get() - start) / (stop - start)
                                                                      * (len(frames) - 1)), 0, len(frames) - 1))])

RE = RunEngine({})
RE.subscribe(CdiLiveCallback(args.ingest, "image", geometry=GEOMETRY_34IDC))
RE(adaptive_rocking_scan(image, th, start, stop, args.points, gateway=args.gateway, dwell=0.2),
   lambda name, doc: print(f"stopped after {doc['num_events'].get('primary', 0)} of {args.points} points"
                           if name == "stop" else "", end="\n" if name == "stop" else ""))
