"""FastAPI gateway: scan state and reconstructions over HTTP."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel

from shared import __version__
from shared.messages import SCAN_ID
from shared.nn.inference import to_input_grid
from shared.settings import Settings
from shared.store import Store

ScanId = Path(pattern=SCAN_ID.pattern, max_length=64)


class StageSummary(BaseModel):
    frames_used: int
    chi: float
    seconds: float


class ScanView(BaseModel):
    scan: str
    state: Literal["acquiring", "complete", "failed"]
    frames_expected: int
    frames_received: int
    duplicates: int
    out_of_order: int = 0
    missing: int | None = None
    reason: str | None = None
    results: dict[str, StageSummary]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = Store(settings)
    app = FastAPI(title="cdi-live", version=__version__, description="Real-time Bragg CDI reconstructions")

    def load(scan: str) -> dict:
        state = store.scan(scan)
        if state is None:
            raise HTTPException(404, f"unknown scan {scan!r}")
        return state

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/api/scans/{scan}", response_model=ScanView)
    def scan_detail(scan: str = ScanId):
        state = load(scan)
        results = {stage: state[f"result_{stage}"] for stage in ("nn", "refined") if f"result_{stage}" in state}
        return ScanView(**{k: state.get(k) for k in ScanView.model_fields if k in state}, results=results)

    @app.get("/api/scans/{scan}/reconstruction")
    def reconstruction(scan: str = ScanId, stage: Literal["nn", "refined"] = "nn",
                       format: Literal["npz"] = Query("npz")):
        load(scan)
        result = store.result(scan, stage)
        if result is None:
            raise HTTPException(404, f"no {stage} result for scan {scan!r} yet")
        amplitude, phase, info = result
        crop = tuple(info.get("crop") or amplitude.shape)
        if crop != amplitude.shape:  # onto the grid conjugate to the assembled, cropped volume
            amplitude, phase, _ = to_input_grid(amplitude, phase, crop, crop)
        buffer = io.BytesIO()
        np.savez(buffer, amplitude=amplitude.astype(np.float32), phase=phase.astype(np.float32))
        return Response(buffer.getvalue(), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{scan}_{stage}.npz"'})

    return app
