"""Response and request bodies of the gateway (they make the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from shared.state.results import STAGES

State = Literal["acquiring", "complete", "failed"]
Stage = Literal["nn", "refined", "full"]  # shared.state.results.STAGES, spelled out for the OpenAPI schema


class StageSummary(BaseModel):
    frames_used: int
    chi: float = Field(description="Fourier-magnitude misfit; against the measured frames unless chi_on says "
                                   "otherwise (the preview's: on the 32³ network grid)")
    chi_on: str | None = Field(None, description="what chi is measured against: 'measured frames' or a grid")
    seconds: float
    verdict: Literal["converged", "uncertain"] | None = Field(None, description="the refined and full-grid stages': "
                                                                 "whether the answer can be trusted (shared.solver.trust)")
    chi_floor: float | None = Field(None, description="the χ the data's own counting noise allows (refined, full)")
    verdict_reason: Literal["search", "model", "photons", "disagreement"] | None = Field(
        None, description="why an answer is uncertain: search (above the floor, more work may help), model (the "
                          "floor is not reachable with this forward model), photons (the floor is too high to promise "
                          "0.1 rad), disagreement (independent solutions differ); null when converged")
    chi_free: float | None = Field(None, description="χ on 5 % of the measured voxels withheld from the fit "
                                   "(cross-validation, as crystallography's R-free): fitting noise gets no credit there")
    chi_free_floor: float | None = Field(None, description="the chi_free a right answer reaches: the withheld voxels' "
                                         "Poisson floor·√(1 + 2·support/voxels); the verdict compares chi_free with it")
    chi_floor_fitted: float | None = Field(None, description="the χ a right answer reaches once its support's voxels "
                                           "have fitted part of that noise: chi_floor·√(1 − 2·support/voxels) "
                                           "(informative; the verdict reads chi_free)")
    grid: list[int] | None = Field(None, description="the grid of the stage's arrays (full: the input's)")
    chi_refinement_grid: float | None = Field(None, description="the refined stage's χ on its own (binned) grid, "
                                              "`grid`; not against the measured frames")
    partial: bool | None = Field(None, description="the preview's: true while it rests on part of the frames "
                                 "(frames_used of frames_expected): not yet the final answer's quality")
    frames_expected: int | None = Field(None, description="the scan's frames, beside frames_used (the preview's)")


class QueuePlace(BaseModel):
    stage: Literal["refined", "full"]
    position: int = Field(description="jobs ahead of this one (running ones included)")
    eta_s: float = Field(description="estimated seconds until it starts")


class ScanView(BaseModel):
    scan: str
    state: State
    proposal: str | None = Field(None, description="the experiment's proposal: who may read this scan")
    frames_expected: int
    frames_received: int
    duplicates: int
    out_of_order: int = 0
    missing: int | None = None
    reason: str | None = None
    started: float | None = Field(None, description="Unix time of the start message")
    ended: float | None = Field(None, description="Unix time of the end message")
    geometry: dict | None = Field(None, description="the start message's geometry, if it had one")
    roi: dict | None = Field(None, description="the detector region the ingest kept around the Bragg peak "
                             "(corner: first row and column; shape): refinement reads the detector around it")
    converged_at_frames: int | None = Field(None, description="frames in when more would not change the "
                                            "reconstruction materially (shared.solver.convergence); null until then")
    convergence: dict | None = Field(None, description="the latest preview's verdict: frames, signal_left, "
                                     "phase_change, amplitude_change, converged")
    queue: QueuePlace | None = Field(None, description="while the scan waits for a stage: its place in the "
                                     "queue (shared.state.scheduling); null once the stage is running or done")
    refining: dict | None = Field(None, description="while the refined or full-grid stage runs: since (Unix "
                                  "time), worker, resumed (it had yielded to a fresher scan before), stage")
    results: dict[str, StageSummary]

    @classmethod
    def from_record(cls, record: dict) -> "ScanView":
        results = {stage: record[f"result_{stage}"] for stage in STAGES if f"result_{stage}" in record}
        return cls(**{k: record[k] for k in cls.model_fields if k in record and k != "results"}, results=results)


class ScanPage(BaseModel):
    scans: list[ScanView]
    total: int = Field(description="scans matching the filter")
    limit: int
    offset: int


class RefineRequest(BaseModel):
    """Parameters of a re-run of the refined stage's AD polish (the worker's defaults where left out)."""

    steps: int | None = Field(None, ge=1, le=5000)
    time_budget: float | None = Field(None, gt=0, le=300, description="seconds at most")
    loss: Literal["gaussian", "poisson"] = "gaussian"
