"""Who is asking, and which proposals' scans they may read: static keys, OIDC tokens, roles.

- **Static keys** (ACCESS_FILE): a JSON object mapping the SHA-256 hex digest of a key to
  ``{"name": str, "role": "reader"|"beamline"|"staff", "proposals": [str, ...]}``; the file holds
  no key itself. The older API_KEYS are staff keys.
- **OIDC bearer tokens** (OIDC_ISSUER, OIDC_AUDIENCE, OIDC_JWKS as a URL or a file,
  OIDC_PROPOSALS_CLAIM, OIDC_ROLE_CLAIM), verified with PyJWT: signature against the issuer's
  keys, expiry, audience, issuer.
- **Roles**: ``beamline`` writes and reads its own proposals, ``reader`` reads its proposals,
  ``staff`` reads all (and writes).

Without ACCESS_FILE or OIDC_ISSUER the gateway is **open** for reads (API_KEYS alone guard writes):
every reader sees every scan (the page says so), and it serves on loopback only unless ``--insecure``.
A scan of another proposal answers 404, as one that does not exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from fastapi import HTTPException, Request

from shared.physics.errors import InputError
from shared.wire.files import read_json_object
from shared.wire.messages import PROPOSAL_ID
from shared.state.settings import Settings

ROLES = ("reader", "beamline", "staff")
COOKIE = "cdi_live_key"  # the operators' page keeps the key or token it was given here (SameSite=Strict)
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    proposals: frozenset = field(default_factory=frozenset)

    @property
    def reads_all(self) -> bool:
        return self.role == "staff"

    @property
    def writes(self) -> bool:
        return self.role in ("beamline", "staff")

    def may_read(self, proposal: str | None) -> bool:
        return self.reads_all or (proposal is not None and proposal in self.proposals)


OPEN = Identity("anonymous (open: no access control)", "staff")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_access_file(path: Path) -> dict[str, Identity]:
    """ACCESS_FILE → {key digest: identity}; one clear error for anything malformed (the gateway does not start)."""
    try:
        entries = read_json_object(path, "key digest → identity")
    except InputError as exc:
        raise InputError(f"ACCESS_FILE {exc}") from None
    identities = {}
    for key_digest, entry in entries.items():
        where = f"ACCESS_FILE {path}: entry {key_digest[:12]}…"
        if len(key_digest) != 64 or any(c not in "0123456789abcdef" for c in key_digest):  # JSON keys are strings
            raise InputError(f"{where}: keys are SHA-256 hex digests (64 lowercase hex digits)")
        if not isinstance(entry, dict) or entry.get("role") not in ROLES or not isinstance(entry.get("name"), str):
            raise InputError(f"{where}: needs name and role ({', '.join(ROLES)})")
        proposals = entry.get("proposals", [])
        if not isinstance(proposals, list) or not all(isinstance(p, str) and PROPOSAL_ID.match(p) for p in proposals):
            raise InputError(f"{where}: proposals must be a list of proposal ids")
        identities[key_digest] = Identity(entry["name"], entry["role"], frozenset(proposals))
    return identities


class TokenVerifier:
    """OIDC bearer tokens: PyJWT verifies the signature with the issuer's JWKS (a URL, fetched and cached by
    PyJWKClient, or a file), the expiry, the audience and the issuer."""

    ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]

    def __init__(self, settings: Settings):
        import jwt

        self.jwt, self.settings = jwt, settings
        source = settings.oidc_jwks
        if source.startswith(("http://", "https://")):
            self.client, self.keys = jwt.PyJWKClient(source, cache_keys=True, lifespan=300), None
        else:
            try:
                self.client, self.keys = None, jwt.PyJWKSet.from_json(Path(source).read_text())
            except (OSError, jwt.PyJWKError, ValueError) as exc:
                raise InputError(f"OIDC_JWKS {source}: not a readable JWKS ({exc})") from None

    def key_for(self, token: str):
        if self.client is not None:
            return self.client.get_signing_key_from_jwt(token).key
        kid = self.jwt.get_unverified_header(token).get("kid")
        candidates = [k for k in self.keys.keys if kid is None or k.key_id == kid]
        if not candidates:
            raise self.jwt.InvalidTokenError("no key of the issuer matches the token's kid")
        return candidates[0].key

    def identity(self, token: str) -> Identity:
        s = self.settings
        claims = self.jwt.decode(token, self.key_for(token), algorithms=self.ALGORITHMS, audience=s.oidc_audience,
                                 issuer=s.oidc_issuer, options={"require": ["exp", "iss", "aud"]})
        proposals = claims.get(s.oidc_proposals_claim) or []
        if isinstance(proposals, str):
            proposals = proposals.split()
        role = claims.get(s.oidc_role_claim)
        return Identity(str(claims.get("preferred_username") or claims.get("sub") or "oidc"),
                        role if role in ROLES else "reader",
                        frozenset(p for p in proposals if isinstance(p, str) and PROPOSAL_ID.match(p)))


class Access:
    """The gateway's one place that turns a request into an identity (or 401)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys: dict[str, Identity] = read_access_file(settings.access_file) if settings.access_file else {}
        for n, key in enumerate(sorted(settings.api_key_set())):  # the older API_KEYS: staff
            self.keys.setdefault(digest(key), Identity(f"api-key-{n + 1}", "staff"))
        self.tokens = TokenVerifier(settings) if settings.oidc_issuer else None
        self.open = not settings.access_configured  # API_KEYS alone guard writes only, as they always did

    def credential_identity(self, request: Request, cookie_ok: bool = True) -> Identity | None:
        """The identity the request's credential names (None without one); 401 for an unknown, forged, expired
        or wrong-audience one. ``cookie_ok``: the page's cookie counts (reads; writes need the header, so a
        page elsewhere cannot make a browser write)."""
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip() if scheme.lower() == "bearer" else ""
        if not credential and cookie_ok:  # the page's key (EventSource and download links send no headers)
            credential = unquote(request.cookies.get(COOKIE, ""))
        if not credential:
            return None
        key_digest = digest(credential)
        for known, identity in self.keys.items():
            if secrets.compare_digest(known, key_digest):
                return identity
        if self.tokens is not None and credential.count(".") == 2:
            try:
                return self.tokens.identity(credential)
            except Exception as exc:  # PyJWT's errors, an unreachable JWKS URL: the token is not accepted
                raise HTTPException(401, f"token not accepted ({type(exc).__name__})", headers=UNAUTHORIZED) from None
        raise HTTPException(401, "unknown key", headers=UNAUTHORIZED)

    def identify(self, request: Request) -> Identity:
        """Who reads: anyone in open mode, else the credential's identity (401 without one)."""
        if self.open:
            return OPEN
        identity = self.credential_identity(request)
        if identity is None:
            raise HTTPException(401, "credentials required (Authorization: Bearer <key or token>)",
                                headers=UNAUTHORIZED)
        return identity

    def writer(self, request: Request) -> Identity:
        """An identity that may write (beamline or staff), in open mode too: 401 without a valid credential,
        403 for a reader."""
        identity = self.credential_identity(request, cookie_ok=False)
        if identity is None:
            raise HTTPException(401, "a valid key is required (Authorization: Bearer <key>)", headers=UNAUTHORIZED)
        if not identity.writes:
            raise HTTPException(403, f"{identity.name} ({identity.role}) may only read")
        return identity


class AuditLog:
    """Data reads as JSON lines in DATA_DIR/audit/reads.jsonl (who, role, scan, what, when), rotated by size."""

    def __init__(self, settings: Settings):
        folder = Path(settings.data_dir) / "audit"
        folder.mkdir(parents=True, exist_ok=True)
        self.logger = logging.getLogger(f"cdi-live.audit.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        handler = logging.handlers.RotatingFileHandler(folder / "reads.jsonl", maxBytes=settings.audit_max_mb * 2**20,
                                                       backupCount=settings.audit_backups)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self.logger.addHandler(handler)

    def read(self, identity: Identity, scan: str | None, what: str, status: int = 200) -> None:
        self.logger.info(json.dumps({"time": round(time.time(), 3), "who": identity.name, "role": identity.role,
                                     "scan": scan, "what": what, "status": status}))
