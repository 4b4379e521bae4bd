"""/api/scans: scan list and detail, reconstructions, strain maps, raw frames, re-refine, delete."""

from __future__ import annotations

import json
import shutil
import time
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.responses import FileResponse

from services.gateway import exports, views
from services.gateway.models import RefineRequest, ScanPage, ScanView, Stage, State
from services.gateway.security import api_key_guard
from shared.errors import InputError
from shared.messages import SCAN_ID
from shared.physics.downsample import to_input_grid
from shared.physics.strain import strain_map, voxel_size_nm
from shared.settings import Settings
from shared.store import Store

ScanId = Path(pattern=SCAN_ID.pattern, max_length=64, description="scan id as sent in the start message")


def scans_router(settings: Settings, store: Store) -> APIRouter:
    router = APIRouter(prefix="/api/scans", tags=["scans"])
    guard = Depends(api_key_guard(settings))

    def load(scan: str) -> dict:
        record = store.scan(scan)
        if record is None:
            raise HTTPException(404, f"unknown scan {scan!r}")
        return record

    def stage_arrays(scan: str, stage: str, on_crop_grid: bool = True):
        """A stage's (amplitude, phase, info) of a scan already loaded; with ``on_crop_grid``, on the grid
        conjugate to the assembled, cropped volume (else as stored). 404 while the stage does not exist."""
        result = store.result(scan, stage)
        if result is None:
            raise HTTPException(404, f"no {stage} result for scan {scan!r} yet")
        amplitude, phase, info = result
        crop = tuple(info.get("crop") or amplitude.shape)
        if on_crop_grid and crop != amplitude.shape:
            amplitude, phase, _ = to_input_grid(amplitude, phase, crop, crop)
        return amplitude, phase, info

    def voxel_grid(info: dict, amplitude: np.ndarray) -> tuple:
        """The measured grid whose real-space voxel the arrays share: the refined stage keeps the input's
        voxel on a smaller field of view (``voxel_grid``), the NN stage that of its crop."""
        return tuple(info.get("voxel_grid") or amplitude.shape)

    def download(content: bytes, fmt: str, name: str) -> Response:
        return Response(content, media_type=exports.MEDIA[fmt],
                        headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})

    @router.get("", response_model=ScanPage)
    def list_scans(state: State | None = None, limit: int = Query(20, ge=1, le=100),
                   offset: int = Query(0, ge=0, le=1_000_000)):
        """Scans, newest first."""
        records, total = store.list_scans(state, limit, offset)
        return ScanPage(scans=[ScanView.from_record(r) for r in records], total=total, limit=limit, offset=offset)

    @router.get("/{scan}", response_model=ScanView)
    def scan_detail(scan: str = ScanId):
        return ScanView.from_record(load(scan))

    @router.get("/{scan}/reconstruction", response_class=Response,
                responses={200: {"content": {"application/octet-stream": {}}}})
    def reconstruction(scan: str = ScanId, stage: Stage = "nn",
                       format: Literal["npz", "h5", "cxi", "vti"] = "npz"):
        """float32 ``amplitude`` and ``phase`` on the real-space grid of the cropped volume."""
        geometry = load(scan).get("geometry")
        amplitude, phase, info = stage_arrays(scan, stage)
        try:
            spacing = voxel_size_nm(geometry, voxel_grid(info, amplitude)) if geometry else (1.0, 1.0, 1.0)
        except InputError:
            spacing = (1.0, 1.0, 1.0)
        attrs = {"scan": scan, "stage": stage, "chi": info.get("chi", float("nan")),
                 "frames_used": info.get("frames_used", 0), "seconds": info.get("seconds", 0.0)}
        content = exports.encode({"amplitude": amplitude, "phase": phase}, format, attrs, tuple(spacing))
        return download(content, format, f"{scan}_{stage}")

    @router.get("/{scan}/strain", response_class=Response, responses={
        409: {"description": "the scan has no geometry"}, 422: {"description": "the geometry gives no reflection"}})
    def strain(scan: str = ScanId, stage: Stage = "refined", format: Literal["npz", "vti"] = "npz",
               threshold: float = Query(0.3, gt=0.0, lt=1.0, description="support: amplitude above this × max")):
        """Displacement (nm) and strain along the Bragg vector, from the scan's geometry."""
        geometry = load(scan).get("geometry")
        if not geometry:
            raise HTTPException(409, "this scan's start message carried no geometry: strain needs it")
        amplitude, phase, info = stage_arrays(scan, stage)
        try:
            voxel = voxel_size_nm(geometry, voxel_grid(info, amplitude))
            support = exports.support_of(amplitude, threshold)
            displacement, strain_g = strain_map(phase, support, geometry.get("hkl", (1, 1, 1)),
                                                geometry.get("lattice_nm", 0.40782), voxel)
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
        arrays = {"displacement_nm": displacement, "strain": strain_g, "amplitude": amplitude,
                  "support": support.astype(np.float32)}
        return download(exports.encode(arrays, format, {}, tuple(voxel)), format, f"{scan}_{stage}_strain")

    @router.get("/{scan}/frames", response_class=FileResponse, responses={409: {"description": "still acquiring"}})
    def raw_frames(scan: str = ScanId):
        """The raw frames as written by the ingest (HDF5, Bitshuffle-LZ4; 'received' marks frames present)."""
        if load(scan).get("state") == "acquiring":
            raise HTTPException(409, "the scan is still acquiring; its file is complete after 'end'")
        path = (settings.data_dir / scan / "frames.h5").resolve()
        if settings.data_dir.resolve() not in path.parents or not path.is_file():
            raise HTTPException(404, f"no raw frames for scan {scan!r}")
        return FileResponse(path, media_type="application/x-hdf5", filename=f"{scan}_frames.h5")

    @router.get("/{scan}/view")
    def page_view(scan: str = ScanId, stage: Stage = "nn", level: float = Query(0.5, gt=0.05, lt=0.95)):
        """What the operators' page draws: isosurface mesh coloured by phase and central slices."""
        load(scan)
        amplitude, phase, info = stage_arrays(scan, stage, on_crop_grid=False)
        return {"scan": scan, "stage": stage, "frames_used": info.get("frames_used"), "chi": info.get("chi"),
                **views.page_view(amplitude, phase, level)}

    @router.post("/{scan}/refine", status_code=202, dependencies=[guard])
    def rerun_refinement(request: RefineRequest, scan: str = ScanId):
        """Queue AD refinement again with these parameters (API key required)."""
        record = load(scan)
        if "result_nn" not in record or record.get("state") == "acquiring":
            raise HTTPException(409, "refinement needs the complete scan's NN result")
        store.redis.xadd(store.keys.refine_jobs, {"scan": scan, "queued": time.time(),
                                                  "options": json.dumps(request.model_dump(exclude_none=True))})
        return {"scan": scan, "queued": True, **request.model_dump(exclude_none=True)}

    @router.delete("/{scan}", status_code=204, dependencies=[guard])
    def delete_scan(scan: str = ScanId):
        """Forget a finished scan and delete its raw frames (API key required)."""
        if load(scan).get("state") == "acquiring":
            raise HTTPException(409, "the scan is still acquiring")
        store.delete_scan(scan)
        folder = (settings.data_dir / scan).resolve()
        if settings.data_dir.resolve() in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)
        return Response(status_code=204)

    return router
