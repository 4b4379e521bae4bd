"""The refined stage: from a network's prediction to a converged reconstruction.

    starts    flat, NN, twin, flat twin          (from the network's shape and phase), each with every blur of
              ``coherence`` (partial coherence, ``shared.physics.coherence``; the refined plan's first run is
              coherent, a run again tries σ 0.5 and 1 on the detector axes and 0.5 on every axis:
              ``shared.solver.effort``); a flat background fitted where the data are counts
    explore   ER**10 * HIO**10 → keep the best 2 per scan → HIO**10 → keep 2 (the finalists)
              (successive halving on χ_free, the misfit on 5 % of the voxels withheld from every
              projection; all scans batched: dropping losing starts early is the speed)
    converge  HIO**80 * ER**20
    flatten   the leading finalist (lowest χ_free) and its uniform-density restarts (its phase, a flat amplitude on
              its support at 0.3 and 0.5 of the peak: ``phasing.uniform_density``), ER**20 each, the other
              finalist beside them; the lowest χ_free of the leading finalist's variants takes its place (on
              photon-limited data the search leaves an amplitude textured by noise that holds the phase ~2×
              further from the crystal than the data allow; docs/BENCHMARKS.md, "Twenty-fifth session"); the
              other finalist is not restarted, so that it stays an independent solution; on grids up to 64³
              (at 128³ it cost more than it gained: "Twenty-sixth session")
    tighten   ER**30, support at 0.2 of the blurred maximum (noise stays out of the support's skirt),
              kept per scan only where χ_free rises by less than 10 % (a real crystal's faint rim is not noise)
    final     ER**20 on every measured voxel, the withheld ones too
    polish    the best finalist: ≤ 50 Adam steps by AD through the forward model, unmeasured voxels free, until χ
              gains < 0.1 % over 10 steps
    answer    the finalist with the lowest χ_free before the polish, polished (with its blur, if it has one:
              ``Converged.coherence``); the other finalist is an
              independent solution, and where the two disagree is the answer's phase uncertainty
              (``shared.solver.trust``)
    estimate  on photon counts, the answer shown is the fit's Wiener estimate (``estimate``: its far field
              × λ/(λ + 1), λ the photons it expects there; ``shared.physics.wiener``): a fit reproduces the
              counts' noise, which is grain in the phase (docs/BENCHMARKS.md, "Thirty-sixth session")

The polish minimises the Gaussian (amplitude) misfit by default: at this step
budget it beat the Poisson likelihood on the tuning set (18 against 16 of 24
crystals below 0.1 rad with 20 steps; the Poisson steps did not lower χ);
``polish_loss="poisson"`` selects the likelihood for photon-starved data.

Shrink-wrap runs every 5 iterations (each costs about half an iteration).

The network decides where projections start; projections find the basin,
which gradient descent from the prediction does not (it stalls); AD does what
projections cannot: the Poisson likelihood and masked voxels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

from shared.physics import coherence, phasing, wiener
from shared.solver import convergence, trust
from shared.solver.starts import candidate_starts

AXES = (1, 2, 3)
REFINE_SIZE = 128  # largest refinement grid per axis; a longer axis is DCT-downsampled


@dataclass(frozen=True)
class Plan:
    starts: tuple = ("flat", "nn", "twin", "flat_twin")
    explore: tuple = (("10*ER+10*HIO", 2), ("10*HIO", 2))  # rounds: (schedule, starts kept per scan after it)
    converge: str = "80*HIO+20*ER"
    converge_stall: float = 0.0  # stop on free χ: a run whose χ_free gained less than this fraction over a stretch
    # of the converge (ER end to ER end) stops there; 0: every run converges to the end
    coherence: tuple = ()  # partial coherence: blurs tried with every start, each σ (voxels) on the detector axes or
    # three σ (rocking, rows, columns): ``coherence.sigmas_of``
    background: bool = True  # fit a flat background to photon counts (EM, with the projections: ``shared.physics.coherence``)
    flatten: tuple = (0.3, 0.5)  # uniform-density restarts of each scan's leading run (its phase, a flat amplitude on
    # its support at each fraction of the peak: ``phasing.uniform_density``), run with ``flatten_schedule`` beside
    # every run; the leading run's variant with the lowest χ_free goes on in its place. (): none
    flatten_schedule: str = "20*ER"
    flatten_max_grid: int = 64  # the step runs on refinement grids no longer than this per axis: at 128³ it cost
    # 1.12× the time for no more answers right and no restart kept on the real sets (docs/BENCHMARKS.md,
    # "Twenty-sixth session")
    tighten: str = "30*ER"
    tight_threshold: float = 0.2
    tight_tolerance: float = 0.1  # the tight support is kept where it raises χ by less than this fraction
    final: str = "20*ER"  # on all the measured data, the withheld voxels included, before the AD polish
    polish_steps: int = 50
    polish_loss: str = "gaussian"
    polish_rate: float = 0.02
    polish_time_budget: float | None = None  # seconds of AD polish at most
    polish_patience: int = 10  # stop when χ gained less than 0.1 % over this many steps
    wiener: float = 1.0  # the answer on photon counts, its far field weighted by λ/(λ + wiener): λ its expected
    # photons (``shared.physics.wiener``; the refined stage's last step, ``estimate``); 0: the fit as it is
    beta: float = 0.9
    sigma: float = 1.0
    threshold: float = 0.1
    blur_threshold: float | None = None  # the shrink-wrap threshold of runs with a blur model; None: ``threshold``.
    # Under a blur, a run grows a faint halo the blurred model cannot see, and a support wrapped at 0.1 of the peak
    # grows with it (35–60 % larger than the crystal on blurred scans), leaving the fine fringes' lost contrast to
    # wrong answers that fit as well (docs/BENCHMARKS.md, "Thirty-seventh session")
    shrink_every: int = 5

    def describe(self) -> str:
        steps = [f"starts {'+'.join(self.starts)}"]
        if len(self.coherence) > 1:
            steps[0] += f" × blur σ {{{', '.join(coherence.blur_name(x) for x in self.coherence)}}}"
        if self.blur_threshold is not None and len(self.coherence) > 1:
            steps[0] += f" (shrink-wrap at {self.blur_threshold:g} of the peak under a blur)"
        if self.background:
            steps[0] += ", flat background fitted"
        steps += [f"{schedule} → keep {keep}" for schedule, keep in self.explore]
        steps += [self.converge] if self.converge else []
        if self.converge and self.converge_stall:
            steps[-1] += f" (a run stops where an ER stretch gains < {100 * self.converge_stall:g} % χ_free)"
        if self.flatten:
            steps += [f"the leading run's uniform-density restarts (support at "
                      f"{', '.join(f'{t:g}' for t in self.flatten)} of the peak) → {self.flatten_schedule} → the lowest χ_free"
                      f" (grids ≤ {self.flatten_max_grid}³)"]
        steps += [f"{self.tighten} (support threshold {self.tight_threshold})"] if self.tighten else []
        steps += [f"{self.final} on all data"] if self.final else []
        steps += [f"≤ {self.polish_steps} Adam steps ({self.polish_loss} likelihood)"] if self.polish_steps else []
        steps += [f"on photon counts, the Wiener estimate (far field × λ/(λ + {self.wiener:g}), λ expected photons)"] \
            if self.wiener else []
        return " → ".join(steps)


REFINE_PLAN = Plan()
# The live preview: the refined plan on the frames received so far (those not yet taken left free), warm-started
# from the last preview, without the AD polish (~0.3 s per 32³ scan here; docs/BENCHMARKS.md "Live preview").
PREVIEW_PLAN = Plan(starts=("previous", *REFINE_PLAN.starts), polish_steps=0, wiener=0.0)  # the network's input:
# magnitudes, not counts


def preview_shown(intensity: np.ndarray, measured_samples: np.ndarray) -> str:
    """Which answer the live view shows for a scan being taken: "network" until the frames taken pass the rocking
    curve's peak (``convergence.peak_passed``), then "preview". Before the peak a preview rests on less than half of
    reciprocal space: with 30–50 % of the frames, on fresh seed 4621, it was right on none of 216 scans (median
    0.82–0.98 rad per family), the network's own answer on 13 (0.36–0.66). ``PREVIEW_PLAN`` runs all the same: its
    answer warm-starts the next preview, which keeps the previews past the peak as right as before (not running it
    before the peak lost 19 of 90 held-out right previews past it). docs/BENCHMARKS.md, "Twenty-seventh session"."""
    return "preview" if convergence.peak_passed(intensity, measured_samples) else "network"


# The network's answer to a finished scan, shown until the refined stage lands (~2 s later): one short projection
# run from the last preview (≤ 0.05 s at 32³), so the refined stage is not kept waiting.
FINAL_NN_PLAN = Plan(starts=("previous",), explore=(), converge="10*ER+40*HIO+10*ER", flatten=(), tighten="",
                     final="", polish_steps=0)


@dataclass
class Converged:
    obj: np.ndarray  # (B, …) complex64, centred like the intensity
    support: np.ndarray
    chi: np.ndarray  # over the measured voxels
    start: list  # name of the start kept, per scan
    seconds: dict = field(default_factory=dict)  # per stage, whole batch
    alternatives: np.ndarray | None = None  # (B, finalists − 1, …): the other finalists, best first
    chi_free: np.ndarray | None = None  # over the withheld voxels, of the answer before the polish (all data)
    free: np.ndarray | None = None  # bool, one grid, centred: the withheld voxels (``phasing.free_voxels``)
    coherence: np.ndarray | None = None  # (B, 3) per scan: the answer's partial-coherence blur σ per axis (voxels)
    background: np.ndarray | None = None  # per scan: the answer's flat background (the intensity's units; 0: none)


CHUNK = 1  # iterations between chances to yield (one is ≈ 0.3 s for 128³ with 4 starts on 2 cores;
# ``yield_now`` itself decides how often it asks Redis)


@dataclass
class Checkpoint:
    """Where a preempted refined stage stopped: enough to go on from there, not to start again.

    ``phase``: "explore:<round>", "converge", "flatten", "tighten", "final" or "polish"; ``done``: iterations (or polish
    steps) of that phase already run; ``arrays``: the iterates (obj, support, and the phase's own)."""

    phase: str
    done: int
    names: list
    iteration: int
    arrays: dict
    seconds: dict = field(default_factory=dict)

    def save(self, path) -> None:
        """Atomically (temporary file, then rename): a worker killed mid-write leaves the last good one."""
        tmp = f"{path}.tmp"
        meta = {"phase": self.phase, "done": self.done, "names": self.names, "iteration": self.iteration,
                "seconds": self.seconds}
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **{k: v for k, v in self.arrays.items() if v is not None})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "Checkpoint":
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            arrays = {k: f[k] for k in f.files if k != "meta"}
        return cls(meta["phase"], meta["done"], meta["names"], meta["iteration"], arrays, meta["seconds"])


class Preempted(Exception):
    """Raised between schedule steps when ``yield_now()`` says fresher work waits; carries the checkpoint
    (None: it yielded while preparing its inputs, before anything worth keeping)."""

    def __init__(self, checkpoint: Checkpoint | None):
        super().__init__(f"preempted in {checkpoint.phase} after {checkpoint.done}" if checkpoint else
                         "preempted while preparing")
        self.checkpoint = checkpoint


def converge(intensity: np.ndarray, prediction: np.ndarray, measured: np.ndarray | None = None,
             plan: Plan = REFINE_PLAN, seed: int = 0, yield_now=None, resume: Checkpoint | None = None,
             warm=None, counting=None) -> Converged:
    """Refine predictions (B, …) complex against centred intensities (B, …), both on one grid. ``warm``: per
    scan, the start ``previous`` of the plan (the last preview; None where there is none). ``counting``: per
    scan, whether its data are photon counts on this grid; the plan's flat background (photons per voxel) is
    fitted to those alone (None: to none; the caller knows what its data are: ``shared.solver.stages``).

    ``yield_now()``, asked every ``CHUNK`` iterations, raises :class:`Preempted` when true; passing
    its checkpoint back as ``resume`` goes on where it stopped, with the same result as one run."""
    from shared.solver.refinement import scale_to_data  # Keras loads only when the stage runs

    intensity = np.asarray(intensity, np.float32)
    batch, count = len(intensity), len(plan.starts)
    magnitude = sfft.ifftshift(np.sqrt(np.clip(intensity, 0, None)), axes=AXES).astype(np.float32)
    mask = None if measured is None else sfft.ifftshift(np.broadcast_to(measured, intensity.shape), axes=AXES)
    free = phasing.free_voxels(intensity.shape[1:])  # withheld from every projection; χ_free judges on them
    free_unshifted = sfft.ifftshift(free) if measured is None else sfft.ifftshift(free) & mask
    fit = ~sfft.ifftshift(free) if mask is None else mask & ~sfft.ifftshift(free)
    fitting = plan.background and counting is not None and bool(np.any(counting))  # a flat background, to counts
    power = magnitude**2 if fitting else None
    faint = coherence.faint_voxels(power, fit) if fitting else None
    rounds = list(plan.explore) or [("", 1)]
    phases = [f"explore:{k}" for k in range(len(rounds))] + ["converge", "flatten", "tighten", "final", "polish"]
    if resume is None:
        starts = scale_to_data(candidate_starts(prediction, plan.starts, seed, warm),
                               np.repeat(magnitude, count, axis=0))
        names = np.array(plan.starts * batch).reshape(batch, count)
        grid = np.stack([coherence.sigmas_of(b) for b in plan.coherence or (0.0,)])  # every start with every blur
        starts, names = np.repeat(starts, len(grid), axis=0), np.repeat(names, len(grid), axis=1)
        widths = np.tile(grid[None], (batch, count, 1))  # (B, runs, 3): σ per axis of each run
        amp = np.abs(starts)
        obj, support = starts, amp > plan.threshold * amp.max(axis=AXES, keepdims=True)
        arrays, phase, done, timings, iteration = {}, phases[0], 0, {}, 0
        background = None
        if fitting:  # EM keeps a zero at zero: the scans that are not counts get none
            background = coherence.background_start(power, faint) * np.asarray(counting, bool)
            background = np.repeat(background.astype(np.float32), widths.shape[1])
    else:
        names = np.array(resume.names).reshape(batch, -1)
        arrays, phase, done, timings = dict(resume.arrays), resume.phase, resume.done, dict(resume.seconds)
        obj, support, iteration = arrays.pop("obj"), arrays.pop("support"), resume.iteration
        widths = arrays.pop("widths")
        if widths.size == names.size:  # a checkpoint from before blurs of every axis: widths on the detector axes
            widths = coherence.detector_sigmas(widths.ravel())
        widths = widths.reshape(names.shape + (3,))
        background = arrays.pop("background", None)
    alive = names.shape[1]
    state = phasing.PhasingState(np.repeat(magnitude, alive, axis=0), obj, support,
                                 np.repeat(np.broadcast_to(fit, magnitude.shape), alive, axis=0),
                                 plan.beta, plan.sigma, wrap_thresholds(widths, plan), plan.shrink_every, iteration)
    state.coherence, state.background = coherence_of(widths, magnitude.shape[1:]), background
    state.faint = None if faint is None else np.repeat(faint, alive, axis=0)
    if phases.index(phase) > phases.index("flatten"):  # the tight support from the tighten on
        state.threshold = plan.tight_threshold
    clock = time.perf_counter()

    def chi_free(objects: np.ndarray) -> np.ndarray:
        """χ over the withheld voxels of the runs in ``state`` (any number per scan), with their blur."""
        rows = len(objects) // batch
        return phasing.masked_chi(objects, state.magnitude,
                                  np.repeat(np.broadcast_to(free_unshifted, magnitude.shape), rows, axis=0),
                                  state.coherence, state.background)

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - clock
        clock = time.perf_counter()

    def preempted(run: phasing.ScheduleRun, extra: dict) -> Preempted:
        """Where the phase's schedule stopped, every run of ``state`` and the phase's own arrays (``extra``)."""
        lap(phase.split(":")[0])
        return Preempted(Checkpoint(phase, run.done, names.ravel().tolist(), state.iteration,
                                    {"obj": state.obj, "support": state.support, "mean": run.mean,
                                     "widths": widths, "background": state.background, **extra}, timings))

    def run_chunked(schedule: str, average_last: int, extra: dict) -> np.ndarray:
        """The phase's schedule, from ``done`` on, yielding between chunks."""
        run = phasing.ScheduleRun(schedule, average_last, done, arrays.get("mean"))
        while not run.finished:
            if yield_now is not None and yield_now():
                raise preempted(run, extra)
            run.advance(state, CHUNK)
        return run.result()

    def converge_runs() -> np.ndarray:
        """The plan's converge. With ``converge_stall`` (stop on free χ), at the end of each ER stretch but the
        last a run whose χ_free gained less than that fraction since the last one stops there, with that ER
        iterate; the others go on without it (its FFTs saved). Preempted, it keeps which runs stopped."""
        nonlocal state
        checks = stall_checks(plan.converge) if plan.converge_stall else []
        if not checks:
            return run_chunked(plan.converge, 10, {})
        stopped = arrays.get("stopped", np.zeros(len(state.obj), bool))
        last = arrays.get("last_free", np.full(len(state.obj), np.inf))
        run = phasing.ScheduleRun(plan.converge, 10, done, arrays.get("mean"))
        free_rows = np.repeat(np.broadcast_to(free_unshifted, magnitude.shape), names.shape[1], axis=0)
        going = np.flatnonzero(~stopped)
        full, state = state, phasing.select(state, going) if stopped.any() else state
        try:
            while not run.finished and len(going):
                if yield_now is not None and yield_now():
                    phasing.write_back(full, state, going)
                    state = full
                    raise preempted(run, {"stopped": stopped, "last_free": last})
                run.advance(state, CHUNK)
                if run.done in checks:
                    now = phasing.masked_chi(state.obj, state.magnitude, free_rows[going], state.coherence,
                                             state.background)
                    stall = now > (1 - plan.converge_stall) * last[going]
                    last[going] = now
                    if stall.any():
                        phasing.write_back(full, state, going)
                        stopped[going[stall]] = True
                        going, state = going[~stall], phasing.select(state, np.flatnonzero(~stall))
                        run.mean = None if run.mean is None else run.mean[~stall]
            averaged = np.array(full.obj)
            if len(going):
                averaged[going] = run.result()
            return averaged
        finally:
            phasing.write_back(full, state, going)
            state = full

    def flatten_runs(obj: np.ndarray) -> np.ndarray:
        """Each scan's leading run (lowest χ_free) with its uniform-density restarts (``plan.flatten``), and its
        other runs, each with ``plan.flatten_schedule``; the lowest χ_free of the leading run's variants takes its
        place. The other runs are not restarted: they stay independent solutions (``shared.solver.trust``), which
        they would not be if every run were pulled towards one density. Preempted, it keeps every variant."""
        nonlocal state, names, widths
        extra = len(plan.flatten)
        runs = names.shape[1] - (extra if "flat_lead" in arrays else 0)  # resumed: the restarts are in already
        if "flat_lead" not in arrays:
            lead = np.argmin(chi_free(obj).reshape(batch, runs), axis=1)
            lead_rows = np.arange(batch) * runs + lead
            columns = np.concatenate([np.tile(np.arange(runs), (batch, 1)), np.repeat(lead[:, None], extra, axis=1)],
                                     axis=1)  # per scan: its runs, then its leading run once per restart
            restarts = [phasing.uniform_density(obj[lead_rows], t) for t in plan.flatten]
            state = phasing.select(state, (columns + np.arange(batch)[:, None] * runs).ravel())
            objs, supports = state.obj.reshape(batch, runs + extra, *obj.shape[1:]), state.support.reshape(
                batch, runs + extra, *obj.shape[1:])
            for k, (flat, inside) in enumerate(restarts):
                objs[:, runs + k], supports[:, runs + k] = flat, inside
            state.obj, state.support = objs.reshape(-1, *obj.shape[1:]), supports.reshape(-1, *obj.shape[1:])
            labels = np.array([f"{n} flattened at {t:g}" for n in names[np.arange(batch), lead] for t in plan.flatten])
            names = np.concatenate([names, labels.reshape(batch, extra)], axis=1)
            widths = np.take_along_axis(widths, columns[..., None], axis=1)
            arrays["flat_lead"] = lead
        lead = arrays["flat_lead"]
        ended = run_chunked(plan.flatten_schedule, 10, {"flat_lead": lead}) * state.support
        candidates = np.concatenate([lead[:, None], runs + np.tile(np.arange(extra), (batch, 1))], axis=1)
        scores = np.take_along_axis(chi_free(ended).reshape(batch, runs + extra), candidates, axis=1)  # every row:
        # χ_free is taken with each row's own blur and background
        winner = candidates[np.arange(batch), np.argmin(scores, axis=1)]
        keep = np.tile(np.arange(runs), (batch, 1))
        keep[np.arange(batch), lead] = winner
        rows = (keep + np.arange(batch)[:, None] * (runs + extra)).ravel()
        names, widths = np.take_along_axis(names, keep, axis=1), np.take_along_axis(widths, keep[..., None], axis=1)
        state = phasing.select(state, rows)
        return ended[rows]

    for phase in phases[phases.index(phase):]:
        if phase.startswith("explore"):  # successive halving: losing starts stop early
            schedule, keep = rounds[int(phase.split(":")[1])]
            if schedule:
                run_chunked(schedule, 1, {})
            ranked = np.argsort(chi_free(state.obj * state.support).reshape(batch, -1), axis=1)[:, :keep]
            alive = names.shape[1]
            names, widths = np.take_along_axis(names, ranked, axis=1), np.take_along_axis(widths, ranked[..., None], axis=1)
            state = phasing.select(state, (ranked + alive * np.arange(batch)[:, None]).ravel())
            lap("explore")
        elif phase == "converge":
            obj = converge_runs() if plan.converge else state.obj
            obj = obj * state.support
            lap("converge")
        elif phase == "flatten" and plan.flatten and max(intensity.shape[1:]) <= plan.flatten_max_grid:
            obj = flatten_runs(obj)
            lap("flatten")
        elif phase == "tighten" and plan.tighten:  # noise fitted in the support's faint skirt goes;
            if "loose" not in arrays:  # a real crystal's faint rim stays
                arrays["loose"], arrays["loose_support"] = obj, state.support
                state.obj, state.threshold = obj, plan.tight_threshold
                phasing.shrink_wrap(state)
            loose, loose_support = arrays["loose"], arrays["loose_support"]
            tight = run_chunked(plan.tighten, 10, {"loose": loose, "loose_support": loose_support}) * state.support
            keep = chi_free(tight) < (1 + plan.tight_tolerance) * chi_free(loose)
            obj = np.where(keep[:, None, None, None], tight, loose)
            state.support = np.where(keep[:, None, None, None], state.support, loose_support)
            lap("tighten")
        elif phase == "final":
            if names.shape[1] > 1:  # the best finalist goes on, the others are kept as independent solutions
                order = np.argsort(chi_free(obj).reshape(batch, -1), axis=1)
                rows = order + names.shape[1] * np.arange(batch)[:, None]
                arrays["alternatives"] = obj[rows[:, 1:]].astype(np.complex64)
                obj, names = obj[rows[:, 0]], np.take_along_axis(names, order, axis=1)[:, :1]
                widths = np.take_along_axis(widths, order[..., None], axis=1)[:, :1]
                state = phasing.select(state, rows[:, 0])
            if "chi_free" not in arrays:
                arrays["chi_free"] = chi_free(obj)  # before the final and the polish, which fit every measured voxel
                state.obj = obj
            if plan.final:  # every measured voxel again, the withheld ones too; it yields as the other phases do (20
                # ER at 128³ take ~2 s, which a live scan's job would otherwise wait out behind a backlog scan)
                state.measured = np.broadcast_to(True if mask is None else mask, state.magnitude.shape)
                kept = {"chi_free": arrays["chi_free"],
                        **({"alternatives": arrays["alternatives"]} if "alternatives" in arrays else {})}
                obj = run_chunked(plan.final, 1, kept) * state.support
                lap("final")
        if phase == "polish" and plan.polish_steps:
            polish = {k[len("polish_"):]: v for k, v in arrays.items() if k.startswith("polish_")} or None
            result = polish_with(plan, intensity, obj, measured, widths[:, 0], state.background, yield_now, polish)
            lap("polish")
            if result.interrupted:
                raise Preempted(Checkpoint("polish", result.steps, names.ravel().tolist(), state.iteration,
                                           {"obj": obj, "support": state.support, "chi_free": arrays["chi_free"],
                                            "widths": widths, "background": state.background,
                                            **({"alternatives": arrays["alternatives"]} if "alternatives" in arrays
                                               else {}),
                                            **{f"polish_{k}": v for k, v in result.state.items()}}, timings))
            obj, support, chi = result.obj, result.support, result.chi
            break
        if phase in ("converge", "flatten", "tighten"):
            state.obj = obj
        done = 0
        for name in ("mean", "stopped", "last_free", "flat_lead"):
            arrays.pop(name, None)
    else:
        support = state.support
        chi = phasing.project_chi(obj, magnitude, mask, coherence_of(widths[:, :1], magnitude.shape[1:]),
                                  None if state.background is None else state.background[:batch])
    final_free = arrays["chi_free"] if "chi_free" in arrays else chi_free(obj)
    flat = np.zeros(batch) if state.background is None else state.background[:batch].astype(np.float64)
    return Converged(obj.astype(np.complex64), support, chi, [str(n) for n in names[:, 0]], timings,
                     arrays.get("alternatives"), np.asarray(final_free, np.float64), free, widths[:, 0].astype(np.float64),
                     flat)


def estimate(result: Converged, intensity: np.ndarray, measured: np.ndarray | None, counting, plan: Plan) -> Converged:
    """The answers as shown: on photon counts (``counting``, with a photon step), each answer and its independent
    solutions Wiener-filtered (``plan.wiener``), χ taken again; the fit itself (``result``) is what the searches,
    χ_free and the check on resamples read. Other scans are returned as they are."""
    def measured_of(k: int) -> np.ndarray:
        return np.ones(intensity[k].shape, bool) if measured is None else np.broadcast_to(measured[k], intensity[k].shape)

    scans = [k for k in range(len(result.obj)) if plan.wiener and counting is not None and counting[k]]
    steps = {k: trust.photon_step(intensity[k][measured_of(k)]) for k in scans}
    scans = [k for k in scans if steps[k] is not None]
    if not scans:
        return result
    obj, chi = np.array(result.obj), np.array(result.chi, np.float64)
    others = None if result.alternatives is None else np.array(result.alternatives)
    for k in scans:
        m = measured_of(k)
        flat = float(result.background[k]) if result.background is not None else 0.0
        obj[k] = wiener.filtered(obj[k], intensity[k], m, steps[k], flat, plan.wiener)
        if others is not None:
            others[k] = [wiener.filtered(o, intensity[k], m, steps[k], flat, plan.wiener) for o in others[k]]
        blur = None if result.coherence is None else coherence_of(result.coherence[k], intensity.shape[1:])
        magnitude = sfft.ifftshift(np.sqrt(np.clip(intensity[k:k + 1], 0, None)), axes=AXES)
        mask = None if measured is None else sfft.ifftshift(m)[None]
        chi[k] = phasing.project_chi(obj[k:k + 1], magnitude, mask, blur,
                                     None if result.background is None else np.array([flat]))[0]
    return dataclasses.replace(result, obj=obj, chi=chi, alternatives=others)


def polish_with(plan: Plan, intensity: np.ndarray, obj: np.ndarray, measured: np.ndarray | None = None,
                blur_widths=None, background=None, interrupt=None, resume: dict | None = None):
    """The plan's AD polish of ``obj`` (B, …, centred like ``intensity``), its support held (the amplitude above 10⁻³ of
    its peak), through the model with each scan's blur (σ per axis) and flat background; ``interrupt`` and ``resume``
    as ``refinement.refine``'s. The refined plan's last step, and a fit's that skipped it (``effort.polished``)."""
    from shared.solver.refinement import refine  # Keras loads only when the stage runs

    return refine(intensity, obj, plan.polish_steps, plan.polish_rate, plan.polish_loss, shrink_every=0, threshold=1e-3,
                  measured=measured, patience=plan.polish_patience, tolerance=1e-3,
                  time_budget=plan.polish_time_budget, interrupt=interrupt, resume=resume, blur_widths=blur_widths,
                  background=background)


def stall_checks(schedule: str) -> list[int]:
    """Where a converge may stop a run: after each ER stretch but the last (an ER iterate is a fit, a HIO one a search
    in progress)."""
    ends, at = [], 0
    for name, count in phasing.parse_schedule(schedule):
        at += count
        if name == "ER":
            ends.append(at)
    return ends[:-1]


def wrap_thresholds(widths: np.ndarray, plan: Plan):
    """The shrink-wrap threshold of each run (a column, one row per run) from its σ per axis (…, 3): the plan's
    ``blur_threshold`` where a run has a blur; one number where every run has the same."""
    blurred = np.any(np.asarray(widths).reshape(-1, 3) > 0, axis=1)
    if plan.blur_threshold is None or not blurred.any():
        return plan.threshold
    return np.where(blurred, plan.blur_threshold, plan.threshold).astype(np.float32).reshape(-1, 1, 1, 1)


def coherence_of(widths: np.ndarray, shape) -> np.ndarray | None:
    """The runs' blur multipliers (``shared.physics.coherence``) from their σ per axis (…, 3); None where every run
    is coherent."""
    return coherence.of(shape, np.asarray(widths).reshape(-1, 3))
