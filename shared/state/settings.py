"""One settings model for every service (environment variables, prefix-free names as documented)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.state.scheduling import PREVIEW_MIN_LEFT_S


class Settings(BaseSettings):
    """Read from the environment (e.g. REDIS_URL) or a .env file; CLI options override."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding state, jobs and small arrays")
    key_prefix: str = Field("cdi", description="prefix of every Redis key (lets several deployments share a Redis)")
    data_dir: Path = Field(Path("data/live"), description="raw frames (HDF5 per scan) are written here")
    ingest_bind: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ PULL address of the ingest")
    ingest_hwm: int = Field(10000, description="ZeroMQ receive high-water mark (messages)")
    ingest_ring_mb: int = Field(128, ge=1, description="shared memory between the receiving and the storing process "
                                "(MB): messages wait there while the storing process is behind, then in ZeroMQ")
    ingest_receivers: int = Field(1, ge=1, le=64, description="receivers sharing one stream (ZeroMQ deals its "
                                  "messages among them); each writes its own file, frames.h5 joins them")
    ingest_receiver: int = Field(0, ge=0, description="this receiver's index among INGEST_RECEIVERS (natively "
                                 "it binds INGEST_BIND's port plus this index)")
    max_concurrent_scans: int = Field(16, description="scans acquiring at once; more are rejected")
    scan_idle_timeout_s: float = Field(600.0, description="an acquiring scan silent this long is closed as failed")
    max_frame_bytes: int = Field(64 * 2**20, description="largest frame payload accepted")
    max_scan_bytes: int = Field(4 * 2**30, description="largest scan accepted (frames × ROI pixels × 4 bytes in memory)")
    ingest_roi_px: int = Field(128, ge=0, description="detector pixels per axis kept in memory around the Bragg "
                               "peak for the network input (0: the whole detector); raw files keep whole frames")
    pixel_mask_file: Path | None = Field(None, description="the detector's pixel mask (.npy/.h5/.tif, H×W, non-zero "
                                         "= bad), used for scans whose start message brings none and whose frames "
                                         "are its shape; pixels at the dtype's maximum are invalid in any case")
    flat_field_file: Path | None = Field(None, description="the detector's flat field (H×W per-pixel gain, multiplied; "
                                         "0 = masked), applied before the network and refinement to frames of its shape")
    whitefield_file: Path | None = Field(None, description="the detector's whitefield (H×W flood-field counts, as APS "
                                         "34-ID-C keeps one), used where FLAT_FIELD_FILE is unset: its flat field is "
                                         "mean/whitefield, pixels more than 3σ below the mean masked")
    dark_file: Path | None = Field(None, description="the detector's dark image (H×W counts, subtracted), applied before "
                                   "the network and refinement to frames of its shape")
    convergence_signal_left: float = Field(0.002, gt=0, lt=1, description="a scan is marked converged once at most "
                                           "this fraction of its rocking curve's intensity is estimated to be still to "
                                           "come (shared.solver.convergence; 0.001: no false stop measured, fewer frames saved)")
    preview_every: int = Field(0, description="frames between partial previews (0: about one every "
                               "0.8 s at the scan's frame rate, at least 4 frames apart)")
    preview_min_left_s: float = Field(PREVIEW_MIN_LEFT_S, ge=0, description="no preview is asked once the scan, at "
                                      "its frame rate so far, ends sooner than this (0: previews at any rate)")
    stream_maxlen: int = Field(10000, description="inference backlog (jobs not yet delivered) at which previews "
                                                  "are skipped; final jobs are never dropped")
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    gateway_workers: int = Field(1, description="gateway processes (uvicorn workers) sharing the port")
    gateway_threads: int = Field(4, description="threads serving the gateway's Redis-backed routes")
    infer_batch: int = Field(16, description="jobs per network call")
    claim_idle_ms: int = Field(30000, description="pending jobs idle this long are claimed from dead workers")
    refine_steps: int = Field(50, description="AD polish steps of the refined stage (at most)")
    refine_time_budget: float = Field(10.0, description="seconds of AD polish per scan at most")
    retention_days: float = Field(0, ge=0, description="finished, refined scans older than this are deleted "
                                  "(raw frames and results; 0: kept for ever)")
    max_data_gb: float = Field(0, ge=0, description="DATA_DIR above this: the oldest finished, refined scans are "
                               "deleted (0: no bound)")
    min_free_gb: float = Field(2, ge=0, description="below this much free space in DATA_DIR new scans are refused "
                               "at their start message and /ready degrades")
    result_cache_mb: float = Field(256, ge=0, description="Redis memory for recent result arrays (the files in "
                                   "DATA_DIR are the results; the oldest read are evicted first)")
    refine_fresh_s: float = Field(120.0, gt=0, description="a finished scan's refinement counts as live work (newest "
                                  "first, ahead of the backlog, preempting it) this long after it was queued "
                                  "(shared.state.scheduling)")
    refine_size: int = Field(128, description="largest refinement grid per axis (longer axes of the signal's region "
                             "are DCT-downsampled for the refined stage)")
    full_grid: bool = Field(True, description="after a binned refined stage, fit every measured voxel at the "
                            "detector's resolution (shared.solver.fullgrid): the lowest-priority refinement work")
    max_deliveries: int = Field(3, description="a job delivered this often without success goes to the dead-letter stream")
    api_keys: str = Field("", description="comma-separated keys accepted as 'Authorization: Bearer <key>': staff "
                                          "keys (read every proposal, write; none set: writes answer 401)")
    default_proposal: str = Field("commissioning", pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                  description="the proposal of a scan whose start names none")
    access_file: Path | None = Field(None, description="JSON object: SHA-256 hex digest of a key → {name, role "
                                     "(reader, beamline, staff), proposals}; with it (or API_KEYS, or OIDC) every read "
                                     "needs credentials and sees only its proposals")
    oidc_issuer: str = Field("", description="OIDC issuer whose bearer tokens (JWT) are accepted (empty: no tokens)")
    oidc_audience: str = Field("cdi-live", description="the audience an OIDC token must name")
    oidc_jwks: str = Field("", description="the issuer's signing keys: a JWKS URL or file")
    oidc_proposals_claim: str = Field("proposals", description="token claim listing the caller's proposals")
    oidc_role_claim: str = Field("cdi_live_role", description="token claim with the role (reader, beamline, staff; "
                                                              "absent: reader)")
    audit_max_mb: float = Field(16, gt=0, description="DATA_DIR/audit/reads.jsonl rotates at this size")
    audit_backups: int = Field(10, ge=1, description="rotated audit files kept")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS (empty: CORS off)")
    max_live_subscribers: int = Field(200, description="open Server-Sent-Event streams per gateway")
    max_request_bytes: int = Field(65536, description="largest request body the gateway accepts")

    @field_validator("access_file", "pixel_mask_file", "flat_field_file", "whitefield_file", "dark_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        """An empty variable (compose's ``${VAR:-}``) means unset, not the current folder."""
        return None if value == "" else value

    @property
    def access_configured(self) -> bool:
        """Reads need credentials (else the gateway is open, and serves on loopback only)."""
        return bool(self.access_file or self.oidc_issuer)

    def api_key_set(self) -> set[str]:
        return {k.strip() for k in self.api_keys.split(",") if k.strip()}


def keys(settings: Settings):
    """Redis key names in one place."""
    p = settings.key_prefix

    class Keys:
        infer_jobs = f"{p}:jobs:infer"
        refine_jobs = f"{p}:jobs:refine"
        updates = f"{p}:updates"
        scans = f"{p}:scans"  # sorted set: scan id by start time
        scans_version = f"{p}:scans:version"  # counts writes to any scan record (readers cache pages on it)
        metrics = f"{p}:metrics"
        dead_letters = f"{p}:jobs:dead"
        restored = f"{p}:restored"  # set once the scan index was rebuilt from DATA_DIR: gone when Redis is emptied
        restoring = f"{p}:restoring"
        disk = f"{p}:disk"  # DATA_DIR's size and the volume's free space (housekeeping)
        disk_lock = f"{p}:disk-lock"

        @staticmethod
        def workers(kind: str) -> str:  # sorted set: consumer by time of its last heartbeat
            return f"{p}:workers:{kind}"

        @staticmethod
        def scan(scan_id: str) -> str:
            return f"{p}:scan:{scan_id}"

        @staticmethod
        def result(scan_id: str, stage: str) -> str:  # the result's info (its arrays: DATA_DIR/<scan>/<stage>.h5)
            return f"{p}:result:{scan_id}:{stage}"

        cache_prefix = f"{p}:cache:"  # recent result arrays, bounded by RESULT_CACHE_MB
        cache_index = f"{p}:cache-index"  # sorted set: "<scan>:<stage>" by last read
        cache_sizes = f"{p}:cache-sizes"  # hash: "<scan>:<stage>" → bytes
        cache_bytes = f"{p}:cache-bytes"

        @staticmethod
        def cached(scan_id: str, stage: str) -> str:
            return f"{p}:cache:{scan_id}:{stage}"

    return Keys
