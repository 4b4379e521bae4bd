"""The one message model every service shares: the native ingest protocol and the job records.

Native protocol (ZeroMQ PUSH → ingest PULL), names exact:
    {"type":"start","scan":"<id>","frames":N,"shape":[H,W],"dtype":"uint32", "geometry":{…}?, "proposal":"<id>"?,
     "pixel_mask":{"dtype":"uint32","encoding":"raw"|"lz4"|"bslz4","source":"…"}?, "saturation_value":S?}
      + with pixel_mask, one part: the H×W mask's little-endian bytes, non-zero = bad pixel (DECTRIS'
      convention). saturation_value: counts at or above which a pixel is saturated. Pixels at the
      dtype's maximum are invalid in any case.
    {"type":"frame","scan":"<id>","index":k, "encoding":"lz4"|"bslz4"?}  + one part of raw little-endian bytes
    {"type":"end","scan":"<id>"}
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

SCAN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PROPOSAL_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # the experiment's proposal: whose data a scan is
DTYPES = ("uint8", "uint16", "uint32", "int32", "float32")
MAX_FRAMES = 10_000
MAX_SIDE = 4096


class Geometry(BaseModel):
    """Diffractometer geometry, used for voxel sizes and strain in physical units."""

    model_config = ConfigDict(extra="forbid")
    energy_kev: float = Field(gt=0, le=100)
    distance_m: float = Field(gt=0, le=50)
    pixel_m: float = Field(gt=0, le=0.01)
    rocking_step_deg: float = Field(gt=0, le=10)
    delta_deg: float = 0.0
    gamma_deg: float = 0.0
    hkl: tuple[int, int, int] = (1, 1, 1)
    lattice_nm: float = Field(0.40782, gt=0, le=10)
    beamline: Literal["34idc", "id01", "p10", "28idb"] = Field(
        "34idc", description="diffractometer circles (shared.physics.geometry.DIFFRACTOMETERS)")
    angles_deg: dict[str, float] | None = Field(
        None, max_length=16, description="each circle of that beamline → its angle at the peak, e.g. "
                                         "{'mu': 0, 'eta': 17.4, 'phi': 0, 'nu': 0.8, 'delta': 34.9} at ID01; "
                                         "34-ID-C may give delta_deg/gamma_deg instead")
    rocking_motor: str | None = Field(None, max_length=32, description="the sample circle that rocks "
                                                                       "(default: the beamline's, th at 34-ID-C)")
    pixel_directions: tuple[str, str] | None = Field(
        None, description="lab direction of increasing (row, column) at zero detector angles, e.g. ('y-', 'x+') "
                          "(default: the beamline's)")

    @model_validator(mode="after")
    def _circles(self):
        from shared.physics.errors import InputError
        from shared.physics.geometry import check_circles

        try:
            self.rocking_motor = check_circles(self.model_dump())["rocking_motor"]
        except InputError as exc:
            raise ValueError(str(exc)) from None
        return self
    theta0_deg: float | None = Field(None, description="rocking angle of the first frame")
    detector_roi: tuple[int, int] | None = Field(None, description="(row, column) of the frames' first pixel "
                                                                   "on the whole detector, if they are a crop")
    detector_shape: tuple[int, int] | None = Field(None, description="(rows, columns) of the whole detector")
    beam_center_px: tuple[float, float] | None = Field(None, description="pixel on the detector arm's axis "
                                                                         "(default: the detector's centre)")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scan: str

    @field_validator("scan")
    @classmethod
    def _scan_id(cls, value: str) -> str:
        if not SCAN_ID.match(value):
            raise ValueError("scan id: 1–64 of letters, digits, '.', '_', '-', starting with a letter or digit")
        return value


class PixelMask(BaseModel):
    """A detector's pixel mask (H×W, non-zero = bad), sent as the start message's second part."""

    model_config = ConfigDict(extra="forbid")
    dtype: Literal["uint8", "uint16", "uint32"] = "uint32"
    encoding: Literal["raw", "lz4", "bslz4"] = "raw"
    source: str = Field("start message", max_length=200, description="where the mask came from, for the record")


class Start(_Message):
    type: Literal["start"]
    frames: int = Field(gt=0, le=MAX_FRAMES)
    shape: tuple[Annotated[int, Field(gt=0, le=MAX_SIDE)], Annotated[int, Field(gt=0, le=MAX_SIDE)]]
    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    geometry: Geometry | None = None
    pixel_mask: PixelMask | None = None
    saturation_value: float | None = Field(None, gt=0, description="counts at or above which a pixel is saturated")
    proposal: str | None = Field(None, pattern=PROPOSAL_ID.pattern, description="the experiment's proposal (1–64 "
                                 "letters, digits, '.', '_', '-'): who may read the scan (default DEFAULT_PROPOSAL)")

    def mask_array(self, payload: bytes):
        """The pixel mask part as an (H, W) array; ValueError if it does not decode."""
        from shared.wire import codecs

        try:
            return codecs.decode(payload, self.pixel_mask.encoding, self.shape, self.pixel_mask.dtype)
        except codecs.CodecError as exc:
            raise ValueError(f"pixel mask does not decode: {exc}") from None


class Frame(_Message):
    type: Literal["frame"]
    index: int = Field(ge=0, lt=MAX_FRAMES)
    encoding: Literal["raw", "lz4", "bslz4"] = "raw"


class End(_Message):
    type: Literal["end"]
    aborted: str | None = Field(None, max_length=500, description="the acquisition was stopped by a fault: why "
                                "(the scan ends failed; its frames are kept)")


Message = Annotated[Union[Start, Frame, End], Field(discriminator="type")]
MESSAGE = TypeAdapter(Message)


def parse_header(raw: bytes) -> Start | Frame | End:
    """Validate the JSON header part of a native message (raises pydantic.ValidationError)."""
    return MESSAGE.validate_json(raw)
