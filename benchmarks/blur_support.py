"""Would a support that does not outgrow the crystal reach the blurred scans (issue 31)? And could the data tell?

Under a detector blur a search's support, wrapped at 0.1 of the peak, ends 35–60 % larger than the crystal (docs/
BENCHMARKS.md, "Thirty-seventh session"). Here the blurred scans of each family are searched by ER/HIO with the
blurred model at each scan's **true** width (an oracle: the width is not what is asked), 4 starts, the least χ_free
kept, 5 % of the voxels withheld from every projection (``phasing.free_voxels``), with supports

    wrapped      the textbook's: a centred half-size box, random phases, shrink-wrap at 0.1 every 20 iterations
    true         the crystal's own support, held (an oracle: the most a support could give)
    deblurred    the textbook's search on the data deblurred at that width (Richardson–Lucy: ``coherence.deconvolve``),
                 coherent; then fitted back to the measured data with the blurred model, ``FIT_BACK``, either
                 wrapped as it goes (``deblurred_wrapped``) or held at t of its answer's blurred peak
                 (``deblurred_held<t>``)
    choice<t>    per scan, the held fit where its χ_free is within a tolerance of the wrapped fit's (as the refined
                 plan's ``tighten`` keeps a tight support)
    true_flat…   (``--flat`` alone) the crystal's own support, held, with a uniform-density prior held through the
                 search: after every projection the amplitude inside the support is pulled, by weight w, toward a
                 flat crystal (c·S, c fitted by least squares), S the support itself (``flat_support``) or its
                 σ 0.7 blur (``flat_edge``, a soft edge as the crystals have). An oracle's support again: the most
                 such a prior could give where the support were known

right (plain phase error < 0.1 rad), median error, median support size against the crystal's, median χ_free. Where
"true" is right and its χ_free is no lower than the wrapped fit's, the withheld voxels cannot tell the crystal's
support from the halo: no selection by the data would find it.

    .venv/bin/python benchmarks/blur_support.py [--count 24] [--seed 4699] [--families facets,defects,fill] [--flat]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import variants  # noqa: E402

STARTS = 4
FIT_BACK = "20*ER+180*HIO+20*ER"
HELD = (0.2, 0.25, 0.3)
TOLERANCES = (0.05, 0.1, 0.2)
RIGHT = 0.1
FLAT_WEIGHTS = (1.0, 0.5)
FLAT_EDGE = 0.7  # σ (voxels) of the soft edge: the crystals' amplitude falls from 0.9 to 0.1 of its peak over 1–2 voxels


def blurred_scans(families, count, seed):
    """The blurred scans of each family: (intensity, truth, σ on the detector axes, family)."""
    import numpy as np

    from shared.solver import evaluation

    rows = []
    for family in families:
        intensity, truth, kinds = evaluation.population(family, count, seed)
        rows += [(intensity[k], truth[k], kind["blur"], family) for k, kind in enumerate(kinds) if kind["blur"] > 0]
    return (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), np.array([r[2] for r in rows]),
            [r[3] for r in rows])


class Search:
    """ER/HIO with the blurred model at known widths, every scan × ``STARTS`` in one batch, free voxels withheld."""

    def __init__(self, intensity, widths):
        import numpy as np
        import scipy.fft as sfft

        from shared.physics import coherence, phasing

        self.scans = len(intensity)
        self.magnitude = self.of(intensity)
        self.kernel = coherence.of(intensity.shape[1:], np.repeat(coherence.detector_sigmas(widths), STARTS, axis=0))
        withheld = phasing.free_voxels(intensity.shape[1:])
        self.fitted = np.broadcast_to(sfft.ifftshift(~withheld), self.magnitude.shape).copy()

    @staticmethod
    def of(intensity):
        import numpy as np
        import scipy.fft as sfft

        return np.repeat(sfft.ifftshift(np.sqrt(np.clip(intensity, 0, None)), axes=(1, 2, 3)), STARTS, axis=0)

    @staticmethod
    def scaled(obj, magnitude):
        """A start on the data's scale: its far field's sum of squares equals the measured one."""
        import numpy as np

        scale = np.sqrt((magnitude**2).sum((1, 2, 3)) / np.maximum((np.abs(obj)**2).sum((1, 2, 3))
                                                                   * np.prod(obj.shape[1:]), 1e-30))
        return (obj * scale.reshape(-1, 1, 1, 1)).astype(np.complex64)

    def run(self, obj, support, schedule, shrink_every, magnitude=None, blurred=True):
        """Per scan, the start with the least χ_free: (objects, supports, χ_free)."""
        from shared.physics import phasing

        magnitude = self.magnitude if magnitude is None else magnitude
        state = phasing.PhasingState(magnitude, self.scaled(obj, magnitude), support, self.fitted,
                                     shrink_every=shrink_every)
        state.coherence = self.kernel if blurred else None
        return self.least_chi_free(phasing.run_schedule(state, schedule), state.support)

    def least_chi_free(self, found, support):
        """Per scan, the start whose answer predicts the withheld voxels best: (objects, supports, χ_free)."""
        import numpy as np

        from shared.physics import phasing

        chi_free = phasing.masked_chi(found, self.magnitude, ~self.fitted, blur=self.kernel)
        best = chi_free.reshape(self.scans, STARTS).argmin(axis=1) + np.arange(self.scans) * STARTS
        return found[best], support[best], chi_free[best]

    def run_flat(self, obj, support, shape, weight):
        """``run`` on a held support, each projection's amplitude inside it pulled by ``weight`` toward c·``shape``
        (a uniform-density crystal; c the least-squares fit to the projection's amplitude)."""
        import numpy as np

        from shared.physics import phasing

        state = phasing.PhasingState(self.magnitude, self.scaled(obj, self.magnitude), support, self.fitted,
                                     shrink_every=0)
        state.coherence = self.kernel
        steps = [name for name, count in phasing.parse_schedule(phasing.PAPER_SCHEDULE) for _ in range(count)]
        mean, average_last = np.zeros_like(state.obj), 20  # as ``phasing.run_schedule`` averages
        for k, name in enumerate(steps):
            projected = phasing.project_magnitude(state)
            amplitude = np.abs(projected)
            fit = (amplitude * shape).sum((1, 2, 3), keepdims=True) / (shape * shape).sum((1, 2, 3), keepdims=True)
            inside = ((1 - weight) * amplitude + weight * fit * shape) * np.exp(1j * np.angle(projected))
            outside = 0 if name == "ER" else state.obj - state.beta * projected
            state.obj = np.where(support, inside, outside).astype(np.complex64)
            if k >= len(steps) - average_last:
                mean += state.obj
        return self.least_chi_free(mean / average_last, support)


def summary(name, found, truth, crystal, families) -> dict:
    import numpy as np

    from shared.solver import evaluation

    obj, support, chi_free = found
    errors = np.array(evaluation.all_errors(obj, truth)["phase_unweighted"])  # the plain error, as every benchmark's
    return {"variant": name, "right": int((errors < RIGHT).sum()), "scans": len(truth),
            "right_per_family": {f: int(((errors < RIGHT) & (np.array(families) == f)).sum()) for f in dict.fromkeys(families)},
            "median_error": round(float(np.median(errors)), 3),
            "support_ratio": round(float(np.median(support.sum((1, 2, 3)) / crystal.sum((1, 2, 3)))), 2),
            "median_chi_free": round(float(np.median(chi_free)), 4),
            "errors": [round(float(e), 3) for e in errors], "chi_free": [round(float(c), 5) for c in chi_free]}


def main() -> None:
    import numpy as np

    from shared.physics import coherence, phasing

    parser = variants.population_parser(__doc__.splitlines()[0], seed=4699)
    parser.add_argument("--flat", action="store_true", help="the crystal's own support with a uniform-density prior")
    args = parser.parse_args()
    families = args.families.split(",")
    intensity, truth, widths, family_of = blurred_scans(families, args.count, args.seed)
    search = Search(intensity, widths)
    crystal = np.abs(truth) > 0.1 * np.abs(truth).max(axis=(1, 2, 3), keepdims=True)
    rng = np.random.default_rng(args.seed)
    rows = []

    def record(name, found):
        rows.append(summary(name, found, truth, crystal, family_of))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("errors", "chi_free")}), flush=True)
        return found

    def random_phase(support):
        return (support * np.exp(1j * rng.uniform(-np.pi, np.pi, support.shape))).astype(np.complex64)

    if args.flat:
        flat_variants(search, crystal, record, random_phase)
        write_rows(rows, args.json)
        return

    box = phasing.box_support(search.magnitude.shape)
    record("wrapped", search.run(random_phase(box), box, phasing.PAPER_SCHEDULE, 20))
    held = np.repeat(crystal, STARTS, axis=0)
    record("true", search.run(random_phase(held), held, phasing.PAPER_SCHEDULE, 0))
    deblurred = np.stack([coherence.deconvolve(i, coherence.detector_sigmas([w])[0]) for i, w in zip(intensity, widths)])
    found = record("deblurred_search", search.run(random_phase(box), box, phasing.PAPER_SCHEDULE, 20,
                                                  magnitude=Search.of(deblurred), blurred=False))
    amplitude = np.abs(found[0])
    start = np.repeat(found[0], STARTS, axis=0)
    wrapped_support = np.repeat(amplitude > 0.1 * amplitude.max(axis=(1, 2, 3), keepdims=True), STARTS, axis=0)
    wrapped = record("deblurred_wrapped", search.run(start * wrapped_support, wrapped_support, FIT_BACK, 5))
    smooth = phasing.blur_kernel(intensity.shape[1:], 1.0)
    for threshold in HELD:
        support = np.repeat(phasing.support_from(amplitude, threshold, smooth), STARTS, axis=0)
        tight = record(f"deblurred_held{threshold:g}", search.run(start * support, support, FIT_BACK, 0))
        for tolerance in TOLERANCES:
            chosen = tight[2] <= (1 + tolerance) * wrapped[2]
            pick = [np.where(chosen.reshape(-1, *[1] * (t.ndim - 1)), t, w) for t, w in zip(tight, wrapped)]
            record(f"choice{threshold:g}_tolerance{tolerance:g}", tuple(pick))
            rows[-1]["held_chosen"] = int(chosen.sum())
    network_supports(intensity, search, amplitude, start, record, random_phase)
    print(json.dumps(told_apart(rows)))
    write_rows(rows, args.json)


def write_rows(rows, path) -> None:
    """Every row, per scan too, to ``--json`` where given."""
    if path:
        path.write_text(json.dumps(rows, indent=1))


def flat_variants(search, crystal, record, random_phase) -> None:
    """The crystal's own support, held, without and with the uniform-density prior (``--flat``), all from the same
    random phases."""
    import numpy as np

    from shared.physics import phasing

    held = np.repeat(crystal, STARTS, axis=0)
    start = random_phase(held)
    record("true", search.run(start, held, phasing.PAPER_SCHEDULE, 0))
    edge = np.stack([_blurred(h.astype(np.float32), phasing.blur_kernel(h.shape, FLAT_EDGE)) for h in held])
    for weight in FLAT_WEIGHTS:
        for name, shape in (("support", held.astype(np.float32)), ("edge", edge / edge.max(axis=(1, 2, 3), keepdims=True))):
            record(f"true_flat_{name}_w{weight:g}", search.run_flat(start, held, shape, weight))


def network_supports(intensity, search, deblurred_amplitude, deblurred_start, record, random_phase) -> None:
    """Supports shaped by the network (trained on all three families' shapes): its amplitude held at 0.3 and 0.5 of
    its peak, from random phases; and the deblurred answer held at the network's volume (the threshold that leaves
    as many voxels as the network's amplitude above half its peak)."""
    import numpy as np

    from shared.nn.data import magnitude_of
    from shared.nn.inference import Predictor
    from shared.physics import phasing

    amplitude, _ = Predictor().predict_magnitudes(magnitude_of(intensity))
    smooth = phasing.blur_kernel(intensity.shape[1:], 1.0)
    for threshold in (0.3, 0.5):
        support = np.repeat(phasing.support_from(amplitude, threshold, smooth), STARTS, axis=0)
        record(f"network_held{threshold:g}", search.run(random_phase(support), support, phasing.PAPER_SCHEDULE, 0))
    volume = (amplitude > 0.5 * amplitude.max(axis=(1, 2, 3), keepdims=True)).sum(axis=(1, 2, 3))
    blurred = np.stack([_blurred(a, smooth) for a in deblurred_amplitude])
    level = np.array([np.sort(b.ravel())[::-1][max(v - 1, 0)] for b, v in zip(blurred, volume)])
    support = np.repeat(blurred >= level.reshape(-1, 1, 1, 1), STARTS, axis=0)
    record("deblurred_held_network_volume", search.run(deblurred_start * support, support, FIT_BACK, 0))


def _blurred(amplitude, kernel):
    import scipy.fft as sfft

    return sfft.irfftn(sfft.rfftn(amplitude) * kernel, s=amplitude.shape)


def told_apart(rows) -> dict:
    """Where the crystal's own support is right and the deblurred, wrapped fit is not: on how many scans the
    withheld voxels prefer the crystal's (its χ_free lower)."""
    by = {row["variant"]: row for row in rows}
    true, wrapped = by["true"], by["deblurred_wrapped"]
    missed = [k for k, e in enumerate(true["errors"]) if e < RIGHT <= wrapped["errors"][k]]
    return {"true_right_where_deblurred_wrapped_wrong": len(missed),
            "of_them_true_chi_free_lower": sum(true["chi_free"][k] < wrapped["chi_free"][k] for k in missed)}


if __name__ == "__main__":
    main()
