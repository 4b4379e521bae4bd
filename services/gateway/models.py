"""Response and request bodies of the gateway (they make the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.state.results import STAGES

State = Literal["acquiring", "complete", "failed"]
Stage = Literal["nn", "refined", "full"]  # shared.state.results.STAGES, spelled out for the OpenAPI schema


# What each field means, once for every model below (the OpenAPI schema at /docs shows it); "Model.field"
# where a name means something else in another model.
DESCRIPTIONS = {
    "chi": "Fourier-magnitude misfit; against the measured frames unless chi_on says otherwise (the preview's: on "
           "the 32³ network grid)",
    "chi_on": "what chi is measured against: 'measured frames' or a grid",
    "verdict": "the refined and full-grid stages': whether the answer can be trusted (shared.solver.trust)",
    "chi_floor": "the χ the data's own counting noise allows (refined, full)",
    "verdict_reason": "why an answer is uncertain: search (above the floor, more work may help), model (the floor is "
                      "not reachable with this forward model), photons (the floor is too high, or too much of the signal "
                      "unmeasured, to promise 0.1 rad, or the answer is a run again's on photon counts: picked by "
                      "chi_free among many candidates, it cannot promise it), "
                      "disagreement (independent solutions differ); null when converged",
    "chi_free": "χ on 5 % of the measured voxels withheld from the fit (cross-validation, as crystallography's "
                "R-free): fitting noise gets no credit there",
    "chi_free_floor": "the chi_free a right answer reaches: the withheld voxels' Poisson floor·√(1 + 2·support/voxels); "
                      "the verdict compares chi_free with it",
    "chi_floor_fitted": "the χ a right answer reaches once its support's voxels have fitted part of that noise: "
                        "chi_floor·√(1 − 2·support/voxels) (informative; the verdict reads chi_free)",
    "unmeasured_signal": "the share of the answer's own diffracted intensity that falls on voxels holding no count "
                         "(detector gaps, masked pixels, frames not taken), where chi_free cannot judge it; above 0.1 "
                         "the verdict is uncertain, reason photons",
    "resampled_error": "the largest plain phase error (rad) of the refined stage's first run on 2 Poisson resamples "
                       "of the answer's own model at the scan's photons, against the answer: the error this search "
                       "makes on data like these; above 0.1 the verdict is uncertain, reason photons; null where not "
                       "run (only answers the first run found that are about to be called converged, on photon "
                       "counts, on refinement grids of at most 64³, are checked)",
    "verdict_detail": "the part of the verdict's rule that decided, in words, with its numbers (one verdict_reason "
                      "stands for several rules; shared.solver.trust.judgement)",
    "wider_search": "the refined stage's: true where a run again (not the first run) found the answer on data with a "
                    "noise floor; picked by chi_free among many candidates, whose least is biased low, it is not "
                    "called converged where its fit is blurred (coherence_blur not zero; verdict_reason \"photons\"; "
                    "shared.solver.trust.WIDER_COHERENT_PROMISE)",
    "coherence_blur": "σ (voxels of the input: rocking angle, detector rows, detector columns) of the Gaussian blur of "
                      "the computed intensity the answer was fitted with (partial coherence, detector spread; "
                      "chosen where it lowers chi_free; the full grid's screened again on its own grid, as a σ "
                      "chosen on a binned grid partly models the binning); chi and chi_free are of that blurred "
                      "model; zeros: coherent",
    "background": "the flat background per voxel (air and substrate scattering, dark counts), in the input's units "
                  "(photons for raw counts), that the answer's model adds to its computed intensity, fitted on the "
                  "faint half of the measured voxels where the data are counts; chi and chi_free are of that model; "
                  "0: none",
    "grid": "the grid of the stage's arrays (full: the input's)",
    "chi_refinement_grid": "the refined stage's χ on its own (binned) grid, `grid`; not against the measured frames",
    "partial": "the preview's: true while it rests on part of the frames (frames_used of frames_expected): not yet "
               "the final answer's quality",
    "searching": "the refined stage's: true while this is its first run's answer and a run again (new starts, a "
                 "longer search, partial-coherence blurs) is still searching for a better one; its answer, if "
                 "better, replaces this one; also true while its verdict is checked (checking)",
    "checking": "the refined stage's: true while the answer, final itself, has its verdict checked on Poisson "
                "resamples of its model (resampled_error; ~1 s at 32³): \"uncertain\" until then",
    "shown": "the preview's: which answer it shows, \"network\" (3D-CDI-NN's own, until the frames taken pass the "
             "rocking curve's peak: a preview from less than half of reciprocal space is further off) or "
             "\"preview\" (the refined plan on the frames taken); chi and chi_free are of the answer shown",
    "start": "the refined stage's: the start and the search that found the answer, e.g. \"flat (run 2), width "
             "refitted\" (run n: a run again's; \"flattened at 0.3\": a uniform-density restart; \"searched "
             "deblurred\": the width step's search on deblurred data)",
    "StageSummary.frames_expected": "the scan's frames, beside frames_used (the preview's)",
    "position": "jobs ahead of this one (running ones included)",
    "eta_s": "estimated seconds until it starts",
    "proposal": "the experiment's proposal: who may read this scan",
    "started": "Unix time of the start message",
    "ended": "Unix time of the end message",
    "geometry": "the start message's geometry, if it had one",
    "roi": "the detector region the ingest kept around the Bragg peak (corner: first row and column; shape): "
           "refinement reads the detector around it",
    "converged_at_frames": "frames in when more would not change the reconstruction materially "
                           "(shared.solver.convergence); null until then",
    "convergence": "the latest preview's verdict: frames, signal_left, phase_change, amplitude_change, converged",
    "queue": "while the scan waits for a stage: its place in the queue (shared.state.scheduling); null once the "
             "stage is running or done",
    "refining": "while the refined or full-grid stage runs: since (Unix time), worker, resumed (it had yielded to a "
                "fresher scan before), stage",
    "total": "scans matching the filter",
}


def describe(schema: dict, model: type) -> None:
    """Each property's description from DESCRIPTIONS (pydantic's json_schema_extra hook)."""
    for name, prop in schema.get("properties", {}).items():
        text = DESCRIPTIONS.get(f"{model.__name__}.{name}", DESCRIPTIONS.get(name))
        if text and "description" not in prop:
            prop["description"] = text


class Described(BaseModel):
    model_config = ConfigDict(json_schema_extra=describe)


class StageSummary(Described):
    frames_used: int
    chi: float
    chi_on: str | None = None
    seconds: float
    verdict: Literal["converged", "uncertain"] | None = None
    chi_floor: float | None = None
    verdict_reason: Literal["search", "model", "photons", "disagreement"] | None = None
    verdict_detail: str | None = None
    chi_free: float | None = None
    chi_free_floor: float | None = None
    chi_floor_fitted: float | None = None
    unmeasured_signal: float | None = None
    resampled_error: float | None = None
    wider_search: bool | None = None
    coherence_blur: list[float] | None = None
    background: float | None = None
    grid: list[int] | None = None
    chi_refinement_grid: float | None = None
    partial: bool | None = None
    frames_expected: int | None = None
    searching: bool | None = None
    checking: bool | None = None
    shown: Literal["network", "preview"] | None = None
    start: str | None = None


class QueuePlace(Described):
    stage: Literal["refined", "full"]
    position: int
    eta_s: float


class ScanView(Described):
    scan: str
    state: State
    proposal: str | None = None
    frames_expected: int
    frames_received: int
    duplicates: int
    out_of_order: int = 0
    missing: int | None = None
    reason: str | None = None
    started: float | None = None
    ended: float | None = None
    geometry: dict | None = None
    roi: dict | None = None
    converged_at_frames: int | None = None
    convergence: dict | None = None
    queue: QueuePlace | None = None
    refining: dict | None = None
    results: dict[str, StageSummary]

    @classmethod
    def from_record(cls, record: dict) -> "ScanView":
        results = {stage: record[f"result_{stage}"] for stage in STAGES if f"result_{stage}" in record}
        return cls(**{k: record[k] for k in cls.model_fields if k in record and k != "results"}, results=results)


class ScanPage(Described):
    scans: list[ScanView]
    total: int
    limit: int
    offset: int


class RefineRequest(BaseModel):
    """Parameters of a re-run of the refined stage's AD polish (the worker's defaults where left out)."""

    steps: int | None = Field(None, ge=1, le=5000)
    time_budget: float | None = Field(None, gt=0, le=300, description="seconds at most")
    loss: Literal["gaussian", "poisson"] = "gaussian"
