"""/api/scans: scan list and detail, reconstructions, strain maps, raw frames, re-refine, delete."""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from services.gateway import exports, views
from services.gateway.access import Access, AuditLog, Identity
from services.gateway.models import RefineRequest, ScanPage, ScanView, Stage, State
from shared.wire import framefiles
from shared.physics.errors import InputError
from shared.state.results import TRUST
from shared.wire.messages import SCAN_ID
from shared.physics.downsample import to_input_grid
from shared.physics.strain import lab_maps
from shared.state.settings import Settings
from shared.state.store import Store

ScanId = Path(pattern=SCAN_ID.pattern, max_length=64, description="scan id as sent in the start message")


def scans_router(settings: Settings, store: Store, access: Access, audit: AuditLog) -> APIRouter:
    router = APIRouter(prefix="/api/scans", tags=["scans"])
    reader, writer = Depends(access.identify), Depends(access.writer)

    def load(scan: str, identity: Identity, what: str) -> dict:
        """The scan's record if ``identity`` may read its proposal, audited; else 404, the same answer as for a
        scan that does not exist (another proposal's scan ids are not confirmed either)."""
        record = store.scan(scan)
        if record is None or not identity.may_read(store.proposal_of(record)):
            raise HTTPException(404, f"unknown scan {scan!r}")
        audit.read(identity, scan, what)
        return record

    def stage_arrays(scan: str, stage: str, on_crop_grid: bool = True):
        """A stage's (amplitude, phase, info) of a scan already loaded; with ``on_crop_grid``, on the grid
        conjugate to the assembled, cropped volume (else as stored). 404 while the stage does not exist."""
        result = store.result(scan, stage)
        if result is None:
            raise HTTPException(404, f"no {stage} result for scan {scan!r} yet")
        amplitude, phase, info = result
        return (*crop_grid(amplitude, phase, info), info) if on_crop_grid else (amplitude, phase, info)

    def crop_grid(amplitude: np.ndarray, phase: np.ndarray, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """Stored arrays on the grid conjugate to the assembled, cropped volume (the NN's 32³ is resampled)."""
        crop = tuple(info.get("crop") or amplitude.shape)
        return to_input_grid(amplitude, phase, crop, crop)[:2] if crop != amplitude.shape else (amplitude, phase)

    def in_lab(record: dict, amplitude: np.ndarray, phase: np.ndarray, info: dict, threshold: float = 0.3,
               extra: dict | None = None) -> dict:
        """A stage's maps (as ``stage_arrays`` gives them) on the orthonormal lab grid of the scan's geometry
        (shared.physics.geometry): amplitude, phase, displacement and strain along G, with the grid's spacing
        and axes."""
        measured = (int(record.get("frames_expected") or amplitude.shape[0]), *record.get("shape", amplitude.shape[1:]))
        voxel = tuple(info.get("voxel_grid") or amplitude.shape)  # the refined stage keeps the input's voxel
        offset = info.get("bragg_peak_offset")
        peak = tuple(n // 2 + k for n, k in zip(measured, offset)) if offset else None
        try:
            return lab_maps(amplitude * np.exp(1j * phase), record["geometry"], peak, threshold, measured, voxel, extra)
        except (InputError, np.linalg.LinAlgError) as exc:
            raise HTTPException(422, f"geometry: {exc}") from None

    def uncertainty_of(scan: str, stage: str, shape) -> np.ndarray | None:
        """The refined or full-grid stage's per-voxel phase uncertainty (rad), on the stage's grid; None for
        the preview."""
        if stage not in ("refined", "full"):
            return None
        values = store.result_array(scan, stage, "phase_uncertainty")
        return values if values is not None and values.shape == tuple(shape) else None

    def download(arrays: dict, fmt: str, attrs: dict, spacing, name: str) -> FileResponse:
        """The file written to a temporary folder, streamed, then removed."""
        folder = tempfile.mkdtemp(prefix="cdi-live-download-")
        path = exports.write(pathlib.Path(folder) / f"{name}.{fmt}", arrays, fmt, attrs, tuple(spacing))
        return FileResponse(path, media_type=exports.MEDIA[fmt], filename=f"{name}.{fmt}",
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    pages: dict[tuple, tuple[int, bytes]] = {}  # (state, limit, offset) → (records' version, serialized page)

    @router.get("", response_model=ScanPage)
    def list_scans(state: State | None = None, limit: int = Query(20, ge=1, le=100),
                   offset: int = Query(0, ge=0, le=1_000_000), identity: Identity = reader):
        """Scans of the caller's proposals, newest first. A page is rebuilt only when some scan record changed
        since it was built (one Redis GET otherwise): operators' pages and scripts poll this."""
        proposals = None if identity.reads_all else identity.proposals
        query, version = (state, limit, offset, proposals), store.scans_version()
        cached = pages.get(query)
        if cached is None or cached[0] != version:
            records, total = store.list_scans(state, limit, offset, proposals)
            page = ScanPage(scans=[ScanView.from_record(r) for r in records], total=total, limit=limit, offset=offset)
            if len(pages) > 256:
                pages.clear()
            cached = pages[query] = (version, page.model_dump_json().encode())
        return Response(cached[1], media_type="application/json")

    @router.get("/{scan}", response_model=ScanView)
    def scan_detail(scan: str = ScanId, identity: Identity = reader):
        return ScanView.from_record(load(scan, identity, "detail"))

    @router.get("/{scan}/reconstruction", response_class=Response,
                responses={200: {"content": {"application/octet-stream": {}}}})
    def reconstruction(scan: str = ScanId, stage: Stage = "nn",
                       format: Literal["npz", "h5", "cxi", "vti"] = "npz", identity: Identity = reader):
        """float32 ``amplitude`` and ``phase``: on an orthonormal lab grid (x, y, z; nm) when the scan has a
        geometry, else on the real-space grid of the measured volume (voxel 1)."""
        record = load(scan, identity, f"reconstruction:{stage}:{format}")
        amplitude, phase, info = stage_arrays(scan, stage)
        attrs = {"scan": scan, "stage": stage, "proposal": store.proposal_of(record),
                 "chi": info.get("chi", float("nan")), "frames_used": info.get("frames_used", 0),
                 "seconds": info.get("seconds", 0.0),
                 **{k: info[k] for k in TRUST if k in info}}
        uncertainty = uncertainty_of(scan, stage, amplitude.shape)
        extra = {"phase_uncertainty": uncertainty} if uncertainty is not None else {}
        if record.get("geometry"):
            maps = in_lab(record, amplitude, phase, info, extra=extra)
            arrays, spacing = {"amplitude": maps["amplitude"], "phase": maps["phase"]}, maps["voxel_nm"]
            arrays.update({name: maps[name] for name in extra})
            attrs.update(frame="lab", axes=json.dumps(maps["axes"]), bragg_direction=maps["bragg_direction"])
        else:
            arrays, spacing = {"amplitude": amplitude, "phase": phase, **extra}, (1.0, 1.0, 1.0)
            attrs.update(frame="detector-conjugate grid (no geometry: voxel units)")
        return download(arrays, format, attrs, spacing, f"{scan}_{stage}")

    @router.get("/{scan}/strain", response_class=Response, responses={
        409: {"description": "the scan has no geometry"}, 422: {"description": "the geometry gives no reflection"}})
    def strain(scan: str = ScanId, stage: Stage = "refined", format: Literal["npz", "vti"] = "npz",
               threshold: float = Query(0.3, gt=0.0, lt=1.0, description="support: amplitude above this × max"),
               identity: Identity = reader):
        """Displacement (nm) and strain along the Bragg vector on an orthonormal lab grid (x, y, z), from the
        scan's geometry (detector shear and the measured Bragg direction included)."""
        record = load(scan, identity, f"strain:{stage}:{format}")
        if not record.get("geometry"):
            raise HTTPException(409, "this scan's start message carried no geometry: strain needs it")
        maps = in_lab(record, *stage_arrays(scan, stage), threshold)
        support = maps["amplitude"] > threshold
        arrays = {"displacement_nm": maps["displacement"], "strain": maps["strain"], "amplitude": maps["amplitude"],
                  "support": support.astype(np.float32)}
        if format == "npz":
            arrays["bragg_direction"] = maps["bragg_direction"]
        return download(arrays, format, {"proposal": store.proposal_of(record)}, maps["voxel_nm"],
                        f"{scan}_{stage}_strain")

    @router.get("/{scan}/frames", response_class=FileResponse, responses={409: {"description": "still acquiring"}})
    def raw_frames(scan: str = ScanId, identity: Identity = reader):
        """The raw frames as written by the ingest (HDF5, Bitshuffle-LZ4; 'received' marks frames present)."""
        if load(scan, identity, "frames").get("state") == "acquiring":
            raise HTTPException(409, "the scan is still acquiring; its file is complete after 'end'")
        path = (settings.data_dir / scan / "frames.h5").resolve()
        if settings.data_dir.resolve() not in path.parents or not path.is_file():
            raise HTTPException(404, f"no raw frames for scan {scan!r}")
        # several receivers' files joined by a virtual dataset: one file to download, as from one receiver
        return FileResponse(framefiles.self_contained(path), media_type="application/x-hdf5",
                            filename=f"{scan}_frames.h5")

    @router.get("/{scan}/detector")
    def detector_image(scan: str = ScanId, identity: Identity = reader):
        """The detector image summed over the scan's frames (log10(1 + counts), binned to ≤ 128 per axis) and
        the fraction of each bin that is masked, flagged or saturated: the page overlays it."""
        record = load(scan, identity, "detector")
        path = pathlib.Path(record.get("raw_file") or settings.data_dir / scan / "frames.h5")
        if not path.is_file():
            raise HTTPException(404, f"no raw frames for scan {scan!r}")
        try:
            return views.detector_view(path, roi=record.get("roi"))
        except (OSError, KeyError) as exc:  # being written: a frame not yet readable
            raise HTTPException(409, f"raw frames not readable now ({type(exc).__name__})") from None

    @router.get("/{scan}/view")
    def page_view(scan: str = ScanId, stage: Stage = "nn", level: float = Query(0.5, gt=0.05, lt=0.95),
                  identity: Identity = reader):
        """What the operators' page draws: isosurface mesh coloured by phase and central slices; with a
        geometry, in the lab frame (true shape, nm) with the strain along G (units of 10⁻⁴)."""
        record = load(scan, identity, f"view:{stage}")
        amplitude, phase, info = stage_arrays(scan, stage, on_crop_grid=False)
        uncertainty = uncertainty_of(scan, stage, amplitude.shape)
        drawn = None
        if record.get("geometry"):
            try:
                a, p = crop_grid(amplitude, phase, info)
                extra = {"phase_uncertainty": uncertainty} if uncertainty is not None and a.shape == amplitude.shape \
                    else {}
                maps = in_lab(record, a, p, info, extra=extra)
                drawn = views.page_view(maps["amplitude"], maps["phase"], level, maps["strain"], maps["voxel_nm"],
                                        maps.get("phase_uncertainty"))
            except HTTPException:  # a geometry that gives no lab frame: the detector-grid view still shows
                pass
        drawn = drawn or views.page_view(amplitude, phase, level, uncertainty=uncertainty)
        return {"scan": scan, "stage": stage, "frames_used": info.get("frames_used"), "chi": info.get("chi"),
                **{k: info[k] for k in TRUST if k in info}, **drawn}

    @router.post("/{scan}/refine", status_code=202)
    def rerun_refinement(request: RefineRequest, scan: str = ScanId, identity: Identity = writer):
        """Queue the refined stage again with these AD-polish parameters (a beamline or staff key)."""
        record = load(scan, identity, "refine")
        if "result_nn" not in record or record.get("state") == "acquiring":
            raise HTTPException(409, "refinement needs the complete scan's NN result")
        store.queue_refinement(scan, record, request.model_dump(exclude_none=True))
        return {"scan": scan, "queued": True, **request.model_dump(exclude_none=True)}

    @router.delete("/{scan}", status_code=204)
    def delete_scan(scan: str = ScanId, identity: Identity = writer):
        """Forget a finished scan and delete its raw frames (a beamline or staff key)."""
        if load(scan, identity, "delete").get("state") == "acquiring":
            raise HTTPException(409, "the scan is still acquiring")
        store.delete_scan(scan)
        folder = (settings.data_dir / scan).resolve()
        if settings.data_dir.resolve() in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)
        return Response(status_code=204)

    return router
