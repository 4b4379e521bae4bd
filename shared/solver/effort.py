"""Adaptive effort: more work for a scan whose answer is not trusted yet, none for one that is.

    judge     after a run of the refined stage each scan gets its verdict (``shared.solver.trust``): χ_free against
              its withheld voxels' noise floor, and whether its independent solutions agree
    again     a scan left "uncertain" runs the plan again from new starts (the network's shape with
              random phases, a new seed), converging as long as the textbook ER/HIO (``AGAIN_CONVERGE``; a run
              whose χ_free has stopped gaining stops early, ``AGAIN_STALL``), each
              also with a partial-coherence blur of σ 0.5 and 1 voxel on the
              detector axes and 0.5 on every axis (``shared.physics.coherence``: a model misfit is one reason to
              stay above the floor), when its data could allow a verdict
              (floor ≤ NOISE_LIMIT) or, on noisier data, while its χ_free is above the free floor (a
              right answer predicts the withheld voxels down to it, a wrong basin stays above); a scan
              that reached its floor stops at once
    textbook  a scan still uncertain after that, with a floor that allows a verdict, runs the textbook's own
              search (``TEXTBOOK_STARTS``: random phases in a centred box of half the grid, starts the network
              cannot bias), as long, coherent; MAX_RUNS runs in all
    answer    the lowest-χ_free answer of all its runs; its other solutions are the best answer of each other
              run (independent searches: where they disagree is the phase uncertainty)
    width     the answer of a scan that ran again, refitted at a finer grid of blurs (0.6–1.4× its own, or
              0–1 voxel for a coherent one; every width 20*ER, the best two 100*HIO+30*ER); a blurred answer
              then searched again on its data deblurred at that width (Richardson–Lucy) and fitted back to the
              measured data with the blurred model; the lowest χ_free stands, polished once
    where     on refinement grids of at most SMALL_GRID voxels; a larger, binned scan gets its further work from
              the full-grid stage (``shared.solver.fullgrid``)
    yields    a run again gives way to fresher work (the scan being taken now): it is cut short, and the scan
              keeps the answer it has; in the service (``requeue``) the job then waits again in the backlog
              with the first run's answers (a checkpoint of phase AGAIN) and only its run again comes back: as
              live work while its scan is live, else when the cores are free (``shared.state.scheduling``)

Pure functions on arrays, around ``shared.solver.plans.converge``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from shared.physics import coherence
from shared.physics.phasing import PAPER_SCHEDULE
from shared.solver import trust
from shared.solver.plans import Checkpoint, Converged, Plan, Preempted, converge, polish_with
from shared.solver.starts import bred

MAX_RUNS = 3
AGAIN_SLACK = 1.0  # noisy data (floor > NOISE_LIMIT, never "converged") run again while χ_free is above the free floor
AGAIN_STARTS = ("random", "random", "flat", "twin")
# the run again also tries partial coherence (a model misfit is one reason to fail): σ 0.5 and 1 voxel on the detector
# axes (the detector's spread), 0.5 on every axis (the beam's partial coherence blurs the rocking direction too).
# Tried and not kept (``benchmarks/blur_widths.py``): steps of 0.15 from 0.4 to 1 (on the tuning family 3 of 32 blurred
# scans right against 1, but on the held-out families 16 of 96 right against 18, at 1.3× the time), and fitting σ as
# the object is fitted (PCDI: against a wrong object it settles on a wrong width).
AGAIN_COHERENCE = (0.0, 0.5, 1.0, (0.5, 0.5, 0.5))
# the run again converges as long as the textbook (``phasing.PAPER_SCHEDULE``, 620 iterations, where the first run's
# converge is 100): a crystal unlike the network's training set (a dislocation's phase vortex, a box-filling rod)
# needs HIO's long search, which a start near the answer does not
AGAIN_CONVERGE = PAPER_SCHEDULE
# stop on free χ (``Plan.converge_stall``): a run whose χ_free gains less than 5 % over an ER-to-ER stretch (200
# iterations) stops there. Most runs of noisy data sit at their floor after the first 20 ER; noise-free ones keep
# gaining. Tuning family (facets, seeds 9995–9998): right 48 → 47 of 96, 15–25 % less time; held out (defects, fill,
# seeds 9995–9996): right 29 → 29 of 96, called converged 13 (10 right) → 13 (11), 16 % less time (0.02: 47, 28).
AGAIN_STALL = 0.05
# the last run: the textbook's own search, from 4 starts the network cannot bias (``starts.box``: a random phase
# in a centred box of half the grid), each converging as long as the textbook, for the scans a run again left
# above the floor. Why: on the held-out families most wrong answers were search failures (``benchmarks/
# failure_causes.py``, seed 9991: 20 of 39, the truth's own fit right and better on the withheld voxels), and
# ER/HIO from such starts found some the network-seeded runs miss (a noise-free stacking fault, a dislocation).
# Ranked against network-seeded starts after 20 iterations they lose, right basin or not (the twentieth
# session's variant): so they run on their own and only their final χ_free competes.
TEXTBOOK_STARTS = ("box",) * 4
TEXTBOOK_SHRINK_EVERY = 20  # as the textbook (``phasing.phase_retrieve``)
# a guided textbook search (the genetic algorithm of cohere and of Ulvestad et al. 2017): GENERATIONS runs of
# GENERATION_SCHEDULE, each member bred with the best by χ_free between them (``starts.bred``); 1: the textbook's
# independent starts. Measured, not kept: three generations of the textbook's whole length found two dislocations the
# shipped search misses, but were right on 29 of 72 against 28 on seed 4651, at 1.3–1.5× the time (the rule asked +3)
TEXTBOOK_GENERATIONS = 1
GENERATION_SCHEDULE = "20*ER+180*HIO+20*ER"
# not for photon-limited scans (floor above NOISE_LIMIT: never "converged"): on fresh seeds 9992–9993 the same
# scans were right with it or without (fill 14 against 13 of 24 once), for 8–21 % less time in 5 of 6 runs
TEXTBOOK_PHOTON_LIMITED = False
# After its runs, each answer of a scan that ran again has its width refitted (``refit_widths``) and, where it is
# blurred, a search on its data deblurred at that width (``search_deblurred``). Why: the run again's widths are a coarse
# grid, an answer absorbs a width that is off as a wrong phase (from the true crystal the blurred scans of dev seed 4699
# were right on 4 of 12 at the grid's widths, on 10 at their own), and a search on blurred data does not see the
# fringes' contrast it needs. Measured (docs/BENCHMARKS.md, "Twenty-ninth session" and "Thirtieth session"):
#   - the whole form (every width 20*ER+100*HIO+30*ER, every fit polished): right on 37 against 31 of 72 on fresh seed
#     4721, held out 20 against 17 of 48 on fresh seed 4731, but at 1.6–1.8× the time;
#   - this form (the widths screened, one polish), by a rule written before the run: held out, right on 43 against 36
#     of 96 on fresh seed 4751 (7 scans wrong to right, none right to wrong), no wrong answer called converged either
#     way, at 1.25–1.27× the time. On by default. Again on fresh seed 4771 (after the decision): 28 against 24 of 64,
#     none right to wrong, 1.21–1.27×.
# A blurred answer is refitted at its blur × WIDTH_FACTORS, a coherent one at each σ of WIDTH_COHERENT (the detector
# axes); (): none
WIDTH_FACTORS: tuple = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4)
WIDTH_COHERENT: tuple = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# the widths screened first (successive halving, as the refined plan's explore): WIDTH_SCREEN from the answer at every
# width, the WIDTH_KEEP lowest by χ_free go on to WIDTH_SCHEDULE, then the plan's last steps. "": every width runs
# WIDTH_SCHEDULE (the whole form's "20*ER+100*HIO+30*ER"; the screen picked the same widths at half the time, dev seed
# 4699)
WIDTH_SCREEN = "20*ER"
WIDTH_KEEP = 2
WIDTH_SCHEDULE = "100*HIO+30*ER"
# the refit's and the deblurred search's fits skip the AD polish, and the one that takes an answer's place is polished
# once (``polished``): the polish held half of a refit's time at 32³, and χ_free, which picks the fit, is taken before it
WIDTH_POLISH_WINNER = True
# a blurred answer's search again on its data deblurred at the refitted width (``coherence.deconvolve``), from the run
# again's starts, coherent; its answer fitted to the measured data with the blurred model at that width
DEBLURRED_SEARCH = True
# A blurred fit takes the place of a coherent answer (in the run again's merge and in the width step) only where it
# predicts the withheld voxels better by more than this fraction of χ_free (0: any gain). Why: a blur is one parameter
# more, and the least χ_free of several widths is biased low; a blurred answer is judged with the stricter allowance
# and, from a run again on counts, is not promised. On dev seed 4699, 8 of 10 answers to coherent data that ended
# blurred had taken σ 0.3 for 0.1–2.8 % less χ_free, where blurred data's answers gained 9.5–40 % from their widths.
# By a rule written before its run (fresh seed 5041, 144 scans): called converged and right 36 → 39, wrong ones called
# converged 0 → 0, right 68 → 68; three photon-starved blurred scans, wrong and uncertain either way, ended further
# off as coherent fits. Off all the same: local CI then failed tests/test_detector.py's flagged-pixel case (one crystal
# with a module gap beside its peak, left free: 0.148 rad against 0.067 clean, where the test asks for less than half
# the cost of taking the gap as zeros); flagged scans were not in the rule's run (docs/BENCHMARKS.md, "Fortieth session")
BLUR_MARGIN = 0.0
SMALL_GRID = 64**3
AGAIN = "again"  # the phase of a checkpoint that holds a first run's answers: resumed, only the run again runs


def again_plans(plan: Plan) -> list[Plan]:
    """The plans of the runs after the first, in order (``MAX_RUNS`` − 1 of them): the run again (new starts in the
    network's shape, every blur, the textbook's length), then the textbook's own search (``TEXTBOOK_STARTS``)."""
    again = dataclasses.replace(plan, starts=AGAIN_STARTS, coherence=AGAIN_COHERENCE, converge=AGAIN_CONVERGE,
                                converge_stall=AGAIN_STALL)
    textbook = dataclasses.replace(again, starts=TEXTBOOK_STARTS, explore=(("", len(TEXTBOOK_STARTS)),),
                                   coherence=(), shrink_every=TEXTBOOK_SHRINK_EVERY)
    return [again, textbook][:MAX_RUNS - 1]


def guided(intensity: np.ndarray, prediction: np.ndarray, measured: np.ndarray | None, plan: Plan, seed: int = 0,
           counting=None, yield_now=None, generations: int | None = None) -> Converged:
    """``plan``'s search as a guided one: its starts run ``GENERATION_SCHEDULE``; between generations every member
    of a scan's population is bred with its best by χ_free (``starts.bred``) and the children run again; the last
    generation goes through the plan's own last steps (tighten, final, polish)."""
    generations = TEXTBOOK_GENERATIONS if generations is None else generations
    members = len(plan.starts)
    search = dataclasses.replace(plan, converge=GENERATION_SCHEDULE, flatten=(), tighten="", final="", polish_steps=0)
    warm = None
    for generation in range(generations):
        last = generation == generations - 1
        step = dataclasses.replace(plan, converge=GENERATION_SCHEDULE) if last else search
        if warm is not None:
            step = dataclasses.replace(step, starts=("previous",) * members)
        result = converge(intensity, prediction, measured, step, seed=seed, warm=warm, counting=counting,
                          yield_now=yield_now)
        if last:
            result.start = [f"{start}, guided ×{generations}" for start in plan.starts[:1] * len(result.obj)]
            return result
        population = np.concatenate([result.obj[:, None], result.alternatives], axis=1)  # best first
        warm = [np.stack([bred(scan[0], member) for member in scan]) for scan in population]
    raise ValueError("generations must be ≥ 1")


def needs_more(result: Converged, floors, free_floors, measured: np.ndarray | None,
               photon_limited: bool = True) -> list[int]:
    """The scans of a run that get another: judged on their own grid (the run's χ_free against its withheld
    voxels' floor, its support as the free voxels). ``photon_limited`` False: none whose floor is above
    NOISE_LIMIT."""
    todo = []
    for k, obj in enumerate(result.obj):
        chi_free, _, free = _answer(result, k, measured)
        blurred = trust.is_blurred(None if result.coherence is None else result.coherence[k])
        if floors[k] > trust.NOISE_LIMIT:  # never "converged": again only while above the free floor
            if photon_limited and chi_free > AGAIN_SLACK * trust.free_floor(free_floors[k], free):
                todo.append(k)
            continue
        if not trust.reached_free_floor(chi_free, free_floors[k], free, blurred):  # uncertain whatever the spread
            todo.append(k)
            continue
        others = list(result.alternatives[k]) if result.alternatives is not None else []
        support = np.abs(obj) > 0.1 * np.abs(obj).max()
        spread = trust.phase_spread(obj, others) if others else None
        # judged without its unmeasured signal (``trust.unmeasured_signal``): no search brings back what was not counted
        if trust.verdict(chi_free, free_floors[k], floors[k], free, spread, support, blurred) != "converged":
            todo.append(k)
    return todo


def _answer(result: Converged, k: int, measured: np.ndarray | None) -> tuple[float, np.ndarray, float]:
    """A run's answer for scan k: (χ_free, object, free fraction of its support)."""
    return (float(result.chi_free[k]), result.obj[k],
            trust.free_fraction(result.support[k], None if measured is None else measured[k]))


def _independent(answers: list, free_floor: float, own: np.ndarray) -> np.ndarray:
    """The other solutions that stand for the best answer's uncertainty: the best answer of another run
    when that one fits too (two independent searches; within the model's allowance, which a first run
    stopped short of noise-free data's stricter one still meets), else the best run's own other finalists
    (a run stuck in a wrong basin says nothing about the right answer's spread)."""
    ranked = sorted(answers, key=lambda answer: answer[0])
    good = [obj for chi_free, obj, free in ranked[1:]
            if trust.reached_free_floor(chi_free, free_floor, free, allowance=trust.MODEL_ALLOWANCE)]
    return np.repeat(good[0][None], len(own), 0) if good else own


def first_run_kept(first: Converged, phase: str = AGAIN) -> Checkpoint:
    """A first run's answers as a checkpoint (phase AGAIN): a job whose run again was cut short resumes from them.
    (``resampling.CHECK``: the answers whose verdict's check was cut short, as the job resumes the same way.)"""
    arrays = {"first_obj": first.obj, "first_support": first.support, "first_chi": first.chi,
              "first_chi_free": first.chi_free, "first_free": first.free, "first_coherence": first.coherence,
              "first_background": first.background, "first_alternatives": first.alternatives}
    return Checkpoint(phase, 0, list(first.start), 0, {k: v for k, v in arrays.items() if v is not None},
                      dict(first.seconds))


def first_run_of(checkpoint: Checkpoint) -> Converged:
    """The first run's answers a checkpoint of phase AGAIN (or CHECK) holds (``first_run_kept``)."""
    a = checkpoint.arrays
    return Converged(a["first_obj"], a["first_support"], a["first_chi"], list(checkpoint.names),
                     dict(checkpoint.seconds), a.get("first_alternatives"), a["first_chi_free"], a["first_free"],
                     a.get("first_coherence"), a.get("first_background"))


def refine_with_effort(intensity: np.ndarray, prediction: np.ndarray, measured: np.ndarray | None, plan: Plan,
                       floors, free_floors, first: Converged, counting=None, yield_now=None,
                       before_again=None, requeue: bool = False) -> tuple[Converged, list[int]]:
    """``first`` (a run of ``converge``), with more runs for the scans that need them; returns the merged
    result and the number of runs per scan. ``floors``: each scan's Poisson floor; ``free_floors``: its
    withheld voxels' (``trust.noise_floor(…, over=first.free)``); ``counting``: as ``converge``'s.

    ``yield_now()`` (as ``converge``'s), when true during a run again, cuts it short: the answer so far is
    returned, so fresher work (the scan being taken now) waits for no more than one chunk of iterations. A run
    again is an improvement, not the answer: with ``requeue`` the cut raises Preempted with the first run's answers
    (``first_run_kept``: the job's run again comes back later, its first run's answer shown meanwhile), else the
    operator may ask for it later (``POST …/refine``).
    ``before_again(first, todo)``, where given, is told the first run's result and the scans about to run again."""
    runs = [1] * len(first.obj)
    if np.prod(first.obj.shape[1:]) > SMALL_GRID:
        return first, runs
    best = dataclasses.replace(first, obj=np.array(first.obj), support=np.array(first.support),
                               chi=np.array(first.chi), chi_free=np.array(first.chi_free), start=list(first.start),
                               seconds=dict(first.seconds), coherence=np.array(first.coherence),
                               background=np.array(first.background),
                               alternatives=None if first.alternatives is None else np.array(first.alternatives))
    answers = [[_answer(first, k, measured)] for k in range(len(first.obj))]  # every run's best, per scan
    for attempt, again_plan in enumerate(again_plans(plan), start=1):
        textbook = again_plan.starts == TEXTBOOK_STARTS
        todo = needs_more(best, floors, free_floors, measured, photon_limited=TEXTBOOK_PHOTON_LIMITED or not textbook)
        if not todo:
            break
        if attempt == 1 and before_again is not None:
            before_again(first, todo)
        try:
            run = guided if textbook and TEXTBOOK_GENERATIONS > 1 else converge
            again = run(intensity[todo], prediction[todo], None if measured is None else measured[todo],
                        again_plan, seed=attempt, counting=None if counting is None else np.asarray(counting)[todo],
                        yield_now=yield_now)
        except Preempted:
            if requeue:
                raise Preempted(first_run_kept(first)) from None
            break
        for j, k in enumerate(todo):
            runs[k] += 1
            answers[k].append(_answer(again, j, None if measured is None else measured[todo]))
            if predicts_better(again, j, best, k):  # the answer that predicts the withheld voxels best
                _take(best, k, again, j, f"{again.start[j]} (run {attempt + 1})")
                if best.alternatives is not None:
                    best.alternatives[k] = again.alternatives[j][:best.alternatives.shape[1]]  # its best ones
        _add_seconds(best, again.seconds)
        if best.alternatives is not None:
            for k in todo:
                best.alternatives[k] = _independent(answers[k], free_floors[k], best.alternatives[k])
    refit_widths(best, runs, intensity, prediction, measured, plan, counting, yield_now)
    return best, runs


def describe_width_step() -> str:
    """The step after a scan's runs (``refit_widths``) in words, as it is set; "" where it is off."""
    if not (WIDTH_FACTORS or WIDTH_COHERENT):
        return ""
    schedule = f"{WIDTH_SCREEN} at each → keep {WIDTH_KEEP} → {WIDTH_SCHEDULE}" if WIDTH_SCREEN else WIDTH_SCHEDULE
    words = (f"the answer of a scan that ran again refitted at {len(WIDTH_FACTORS)} widths "
             f"({min(WIDTH_FACTORS, default=1):g}–{max(WIDTH_FACTORS, default=1):g}× its blur; a coherent one at σ "
             f"{min(WIDTH_COHERENT, default=0):g}–{max(WIDTH_COHERENT, default=0):g}), {schedule}")
    if DEBLURRED_SEARCH:
        words += ("; a blurred one searched again on its data deblurred at that width (Richardson–Lucy) and fitted back "
                  "with the blurred model")
    if BLUR_MARGIN:
        words += f"; a blurred fit replaces a coherent answer only where its χ_free is lower by more than {BLUR_MARGIN:.0%}"
    return words + ("; the fit with the lowest χ_free kept, polished once" if WIDTH_POLISH_WINNER else
                    "; the fit with the lowest χ_free kept")


def refit_widths(best: Converged, runs: list[int], intensity: np.ndarray, prediction: np.ndarray,
                 measured: np.ndarray | None, plan: Plan, counting=None, yield_now=None) -> None:
    """In place: each answer of a scan that ran again, refitted at other blurs (``refine_width``): a blurred one at
    its width scaled by ``WIDTH_FACTORS``, a coherent one at ``WIDTH_COHERENT``; kept where χ_free is lower. Fresher
    work (``yield_now``) stops it, the answers so far standing. With ``DEBLURRED_SEARCH`` a blurred answer also runs
    again on its data deblurred at the refitted width (``search_deblurred``). docs/BENCHMARKS.md, "Thirtieth
    session"."""
    for k in [k for k in range(len(best.obj)) if runs[k] > 1]:
        blurred = trust.is_blurred(best.coherence[k])
        if not (WIDTH_FACTORS if blurred else WIDTH_COHERENT):
            continue
        grid = tuple(tuple(float(f) * np.asarray(best.coherence[k], np.float64)) for f in WIDTH_FACTORS) \
            if blurred else WIDTH_COHERENT
        one = slice(k, k + 1)
        mask, counts = None if measured is None else measured[one], None if counting is None else np.asarray(counting)[one]
        fit_plan = dataclasses.replace(plan, polish_steps=0) if WIDTH_POLISH_WINNER else plan
        try:
            refit = refine_width(intensity[one], best.obj[one], mask, fit_plan, grid, counts, yield_now)
            fits = [(refit, "width refitted")]
            if DEBLURRED_SEARCH and trust.is_blurred(refit.coherence[0]):
                fits.append((search_deblurred(intensity[one], prediction[one], mask, fit_plan, refit.coherence[0],
                                              counts, yield_now), "searched deblurred"))
        except Preempted:  # fresher work waits: the answers so far stand
            return
        for fit, _ in fits:
            _add_seconds(best, fit.seconds)
        fit, how = min(fits, key=lambda found: found[0].chi_free[0])
        if predicts_better(fit, 0, best, k):
            if WIDTH_POLISH_WINNER:
                fit = polished(intensity[one], fit, mask, plan, yield_now)
                _add_seconds(best, {"polish": fit.seconds["winner's polish"]})
            _take(best, k, fit, 0, f"{best.start[k]}, {how}")


def predicts_better(found: Converged, j: int, best: Converged, k: int) -> bool:
    """Whether answer j of ``found`` predicts the withheld voxels better than scan k's answer in ``best``: a lower
    χ_free, by more than ``BLUR_MARGIN`` where it would bring a blur to a coherent answer."""
    margin = BLUR_MARGIN if trust.is_blurred(found.coherence[j]) and not trust.is_blurred(best.coherence[k]) else 0.0
    return found.chi_free[j] < (1.0 - margin) * best.chi_free[k]


def found_by_first_run(start: str) -> bool:
    """Whether a scan's answer, by its ``start`` as the record gives it, is the first run's (a run again's answer is
    labelled "… (run n)"; a width refit keeps the label of the search that found it)."""
    return "(run " not in start


def _take(best: Converged, k: int, found: Converged, j: int, start: str) -> None:
    """In place: scan k's answer in ``best`` becomes answer j of ``found`` (object, support, χ, χ_free, blur,
    background), with ``start`` saying where it came from."""
    best.obj[k], best.support[k], best.chi[k] = found.obj[j], found.support[j], found.chi[j]
    best.chi_free[k], best.coherence[k], best.background[k] = found.chi_free[j], found.coherence[j], found.background[j]
    best.start[k] = start


def _add_seconds(best: Converged, seconds: dict) -> None:
    """In place: a further run's seconds per stage added to ``best``'s."""
    for name, spent in seconds.items():
        best.seconds[name] = best.seconds.get(name, 0.0) + spent


def polished(intensity: np.ndarray, fit: Converged, measured: np.ndarray | None, plan: Plan,
             yield_now=None) -> Converged:
    """One scan's fit made without the AD polish (``WIDTH_POLISH_WINNER``), polished as the plan's last step, with its
    blur and background held; its χ_free (taken before any polish) stands. Cut short by fresher work, it stays as it
    was."""
    began = time.perf_counter()
    result = polish_with(plan, intensity, fit.obj, measured, fit.coherence, fit.background, yield_now)
    seconds = {"winner's polish": time.perf_counter() - began}
    if result.interrupted:
        return dataclasses.replace(fit, seconds=seconds)
    return dataclasses.replace(fit, obj=result.obj.astype(np.complex64), support=result.support, chi=result.chi,
                               seconds=seconds)


def search_deblurred(intensity: np.ndarray, prediction: np.ndarray, measured: np.ndarray | None, plan: Plan, widths,
                     counting=None, yield_now=None) -> Converged:
    """One scan's run again on its data deblurred at ``widths`` (σ per axis), coherent; its answer then fitted to the
    measured data with the blurred model (``20*ER`` and the plan's last steps)."""
    deblurred = coherence.deconvolve(intensity[0], widths)[None]
    later = again_plans(plan)
    found = converge(deblurred, prediction, measured, dataclasses.replace(later[0], coherence=()), seed=len(later) + 1,
                     yield_now=yield_now)
    fit = refine_width(intensity, found.obj, measured, plan, (tuple(np.asarray(widths, np.float64)),), counting,
                       yield_now, schedule="20*ER")
    fit.seconds = {**fit.seconds, "deblurred search": sum(found.seconds.values())}
    return fit


def refine_width(intensity: np.ndarray, answer: np.ndarray, measured: np.ndarray | None, plan: Plan, grid,
                 counting=None, yield_now=None, schedule: str | None = None) -> Converged:
    """One scan's answer, refitted at each blur of ``grid`` (``schedule``, by default ``WIDTH_SCHEDULE``, from the
    answer, then the plan's last steps); the lowest χ_free of them. With ``WIDTH_SCREEN`` (the default schedule
    only), every width first runs that and only the ``WIDTH_KEEP`` best go on."""
    screen = WIDTH_SCREEN if schedule is None and len(grid) > WIDTH_KEEP else ""
    refit = dataclasses.replace(plan, starts=("previous",), explore=((screen, WIDTH_KEEP if screen else len(grid)),),
                                converge=WIDTH_SCHEDULE if schedule is None else schedule, converge_stall=0.0,
                                coherence=grid)
    return converge(intensity, answer, measured, refit, warm=list(answer), counting=counting, yield_now=yield_now)
