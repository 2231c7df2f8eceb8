"""The wire contract shared by nodes, the locator and files.

One detection is one impulse heard by one sensor. On the wire it is msgpack inside a
three-frame ZeroMQ message; in files it is one JSON object per line (JSON Lines). Both
carry exactly the same keys, validated by :func:`detection_from_dict`.

Frame layout (written down once, here)::

    [PROTOCOL, kind, payload]
    PROTOCOL = b"shotnet/1"
    kind     = b"det" | b"ack" | b"hb" | b"evt"
    payload  = msgpack map (never pickle)

Time is always integer nanoseconds since the Unix epoch, UTC (``t_ns``).

Unknown keys are rejected, not ignored: within one protocol version the key set is fixed,
so a misspelt ``t_sec`` is caught at the edge instead of silently dropping a field.
"""

from __future__ import annotations

import functools

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import msgpack

PROTOCOL = b"shotnet/1"
KIND_DETECTION = b"det"
KIND_ACK = b"ack"
KIND_HEARTBEAT = b"hb"
KIND_EVENT = b"evt"

NS_PER_S = 1_000_000_000
# Plausible wall-clock range for t_ns: 2001-09-09 .. 2100-01-01.
T_NS_MIN = 1_000_000_000 * NS_PER_S
T_NS_MAX = 4_102_444_800 * NS_PER_S
MAX_PAYLOAD_BYTES = 1 << 20  # 1 MiB: clips are capped well below this

_SENSOR_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_LABEL = re.compile(r"^[a-z0-9_]{1,32}$")

CLOCK_SOURCES = ("gps", "ptp", "chrony", "system", "sim")


class ContractError(ValueError):
    """Raised for any message or file line that does not meet the contract."""


@dataclass(frozen=True)
class Detection:
    """One impulse heard by one sensor.

    Attributes
    ----------
    sensor_id : str
        Sensor id as in the sensor layout's ``properties.id``.
    seq : int
        Per-node sequence number, strictly increasing, starting at 0.
    t_ns : int
        Onset time, integer ns since the Unix epoch (UTC).
    t_sigma_ns : int
        1-sigma timing uncertainty of ``t_ns`` in ns (pick + clock).
    label : str
        Classifier decision, e.g. ``"gunshot"``, ``"firework"``, ``"impulse"``.
    score : float
        Classifier probability of ``label``, 0..1.
    p_gunshot : float
        Classifier probability that the impulse is a gunshot, 0..1.
    clock_source, clock_locked, clock_sigma_ns
        Time quality of the node's clock when the detection was made.
    lat, lon, alt_m
        Position the node believes it is at (degrees, degrees, metres); may be absent.
    peak_dbfs, snr_db
        Peak level in dB relative to full scale and onset SNR in dB.
    model, model_sha256
        Which classifier decided (name and first 16 hex of the model file's sha256).
    clip_fs_hz, clip
        Optional short audio clip around the impulse (gunshots only; float16 bytes).
    """

    sensor_id: str
    seq: int
    t_ns: int
    t_sigma_ns: int
    label: str
    score: float
    p_gunshot: float = 0.0
    clock_source: str = "system"
    clock_locked: bool = False
    clock_sigma_ns: int = 0
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    peak_dbfs: float | None = None
    snr_db: float | None = None
    model: str = ""
    model_sha256: str = ""
    clip_fs_hz: int | None = None
    clip: bytes | None = field(default=None, repr=False)

    @functools.cached_property
    def key(self) -> str:
        """Stable id of this detection: ``sensor_id:seq``."""
        return f"{self.sensor_id}:{self.seq}"


_DET_FIELDS = {f.name for f in fields(Detection)}
_DET_REQUIRED = ("sensor_id", "seq", "t_ns", "t_sigma_ns", "label", "score")


def _int(d: dict, k: str, lo: int, hi: int) -> int:
    if k not in d:
        raise ContractError(f"missing key: {k}")
    v = d[k]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ContractError(f"{k} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ContractError(f"{k}={v} outside [{lo}, {hi}]")
    return v


def _float(d: dict, k: str, lo: float, hi: float, optional: bool = False) -> float | None:
    v = d.get(k)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ContractError(f"{k} must be a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ContractError(f"{k} must be finite, got {v}")
    if not lo <= v <= hi:
        raise ContractError(f"{k}={v} outside [{lo}, {hi}]")
    return v


def detection_from_dict(d: Any) -> Detection:
    """Validate a mapping against the detection contract and build a :class:`Detection`.

    Raises :class:`ContractError` with a message naming the offending key.
    """
    if not isinstance(d, dict):
        raise ContractError(f"detection must be an object, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in _DET_FIELDS)
    if unknown:
        raise ContractError(f"unknown key(s): {', '.join(unknown)}")
    missing = [k for k in _DET_REQUIRED if k not in d]
    if missing:
        raise ContractError(f"missing key(s): {', '.join(missing)}")
    sid = d["sensor_id"]
    if not isinstance(sid, str) or not _SENSOR_ID.match(sid):
        raise ContractError(f"sensor_id must match {_SENSOR_ID.pattern}, got {sid!r}")
    label = d["label"]
    if not isinstance(label, str) or not _LABEL.match(label):
        raise ContractError(f"label must match {_LABEL.pattern}, got {label!r}")
    out: dict[str, Any] = {
        "sensor_id": sid,
        "seq": _int(d, "seq", 0, 2**63 - 1),
        "t_ns": _int(d, "t_ns", T_NS_MIN, T_NS_MAX),
        "t_sigma_ns": _int(d, "t_sigma_ns", 0, 10 * NS_PER_S),
        "label": label,
        "score": _float(d, "score", 0.0, 1.0),
    }
    if "p_gunshot" in d:
        out["p_gunshot"] = _float(d, "p_gunshot", 0.0, 1.0)
    else:
        out["p_gunshot"] = out["score"] if label == "gunshot" else 0.0
    if "clock_source" in d:
        cs = d["clock_source"]
        if cs not in CLOCK_SOURCES:
            raise ContractError(f"clock_source must be one of {CLOCK_SOURCES}, got {cs!r}")
        out["clock_source"] = cs
    if "clock_locked" in d:
        if not isinstance(d["clock_locked"], bool):
            raise ContractError("clock_locked must be a boolean")
        out["clock_locked"] = d["clock_locked"]
    if "clock_sigma_ns" in d:
        out["clock_sigma_ns"] = _int(d, "clock_sigma_ns", 0, 3600 * NS_PER_S)
    out["lat"] = _float(d, "lat", -90.0, 90.0, optional=True)
    out["lon"] = _float(d, "lon", -180.0, 180.0, optional=True)
    out["alt_m"] = _float(d, "alt_m", -1000.0, 10000.0, optional=True)
    out["peak_dbfs"] = _float(d, "peak_dbfs", -400.0, 10.0, optional=True)
    out["snr_db"] = _float(d, "snr_db", -100.0, 400.0, optional=True)
    for k in ("model", "model_sha256"):
        if k in d:
            if not isinstance(d[k], str) or len(d[k]) > 128:
                raise ContractError(f"{k} must be a string of at most 128 characters")
            out[k] = d[k]
    if d.get("clip") is not None:
        clip = d["clip"]
        if not isinstance(clip, (bytes, bytearray)) or len(clip) % 2:
            raise ContractError("clip must be float16 bytes")
        out["clip"] = bytes(clip)
        out["clip_fs_hz"] = _int(d, "clip_fs_hz", 1000, 400_000)
    return Detection(**out)


_DET_ORDER = tuple(f.name for f in fields(Detection))          # (_DET_FIELDS, in declaration order)
_DET_ORDER_NO_CLIP = tuple(k for k in _DET_ORDER if k not in ("clip", "clip_fs_hz"))


def detection_to_dict(det: Detection, *, with_clip: bool = True) -> dict[str, Any]:
    """Mapping form of a detection; ``None`` fields are left out. (Every field is a
    scalar or bytes: a shallow read, not :func:`dataclasses.asdict`'s deep copy, which
    took a sixth of the locator's ingest time at 2,400 detections/s.)"""
    names = _DET_ORDER if with_clip else _DET_ORDER_NO_CLIP
    return {k: v for k in names if (v := getattr(det, k)) is not None}


# ---------------------------------------------------------------- JSON Lines
def detection_to_json(det: Detection) -> str:
    """One JSON line (clips are not written to JSON files)."""
    return json.dumps(detection_to_dict(det, with_clip=False), separators=(",", ":"))


def detection_from_json(line: str) -> Detection:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ContractError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    return detection_from_dict(d)


# ---------------------------------------------------------------- ZeroMQ frames
def encode(kind: bytes, payload: dict[str, Any]) -> list[bytes]:
    """Encode a message as ZeroMQ frames ``[PROTOCOL, kind, msgpack(payload)]``."""
    return [PROTOCOL, kind, msgpack.packb(payload, use_bin_type=True)]


def decode(frames: list[bytes]) -> tuple[bytes, dict[str, Any]]:
    """Decode frames into ``(kind, payload)``; raises :class:`ContractError`."""
    if len(frames) != 3:
        raise ContractError(f"expected 3 frames, got {len(frames)}")
    proto, kind, body = (bytes(f) for f in frames)
    if proto != PROTOCOL:
        raise ContractError(f"unknown protocol {proto[:32]!r}")
    if kind not in (KIND_DETECTION, KIND_ACK, KIND_HEARTBEAT, KIND_EVENT):
        raise ContractError(f"unknown message kind {kind[:16]!r}")
    if len(body) > MAX_PAYLOAD_BYTES:
        raise ContractError(f"payload of {len(body)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        payload = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ContractError(f"payload is not msgpack: {type(exc).__name__}") from None
    if not isinstance(payload, dict):
        raise ContractError("payload must be a map")
    return kind, payload


def encode_detection(det: Detection) -> list[bytes]:
    return encode(KIND_DETECTION, detection_to_dict(det))


def decode_detection(frames: list[bytes]) -> Detection:
    kind, payload = decode(frames)
    if kind != KIND_DETECTION:
        raise ContractError(f"expected a detection, got {kind!r}")
    return detection_from_dict(payload)


# ---------------------------------------------------------------- events
@dataclass(frozen=True)
class Ellipse:
    """95% horizontal error ellipse: semi-axes in metres, azimuth of the major axis in
    degrees clockwise from north (0..180)."""

    major: float
    minor: float
    azimuth_deg: float


@dataclass(frozen=True)
class Event:
    """One located shot (one round). ``t_ns`` is the estimated emission time."""

    event_id: str
    t_ns: int
    lat: float
    lon: float
    alt_m: float
    ellipse95_m: Ellipse
    sensor_ids: tuple[str, ...]
    residual_rms_ms: float
    label: str
    confidence: float
    incident_id: str
    detections: tuple[str, ...] = ()
    x_m: float = 0.0
    y_m: float = 0.0
    t_sigma_ms: float = 0.0
    version: int = 1
    test: bool = False

    def to_dict(self) -> dict[str, Any]:
        # (written out: dataclasses.asdict deep-copies every field, and a crowded night
        # publishes a hundred versions a second)
        e = self.ellipse95_m
        return {"event_id": self.event_id, "t_ns": self.t_ns, "lat": self.lat, "lon": self.lon, "alt_m": self.alt_m,
                "ellipse95_m": {"major": e.major, "minor": e.minor, "azimuth_deg": e.azimuth_deg},
                "sensor_ids": list(self.sensor_ids), "residual_rms_ms": self.residual_rms_ms, "label": self.label,
                "confidence": self.confidence, "incident_id": self.incident_id, "detections": list(self.detections),
                "x_m": self.x_m, "y_m": self.y_m, "t_sigma_ms": self.t_sigma_ms, "version": self.version,
                "test": self.test}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


_EVT_FIELDS = {f.name for f in fields(Event)}


def event_from_dict(d: Any) -> Event:
    if not isinstance(d, dict):
        raise ContractError("event must be an object")
    unknown = sorted(k for k in d if k not in _EVT_FIELDS)
    if unknown:
        raise ContractError(f"unknown key(s): {', '.join(unknown)}")
    try:
        e = d["ellipse95_m"]
        ell = Ellipse(float(e["major"]), float(e["minor"]), float(e["azimuth_deg"]))
        kw = dict(d)
        kw["ellipse95_m"] = ell
        kw["sensor_ids"] = tuple(d["sensor_ids"])
        kw["detections"] = tuple(d.get("detections", ()))
        return Event(**kw)
    except (KeyError, TypeError) as exc:
        raise ContractError(f"bad event: {exc}") from None


# ---------------------------------------------------------------------- heartbeats
@dataclass(frozen=True)
class Heartbeat:
    """A node's health, sent every ``heartbeat_s`` (kind ``b"hb"``, not acknowledged).

    ``noise_floor_dbfs``: 10th percentile of block RMS levels over the last minute (dBFS);
    ``clipped_samples``, ``nonfinite_blocks``, ``overflows``, ``detections``: totals since
    start; ``clock_*``: the time quality now (``clock_ppm``: fitted audio clock rate
    error); ``spool_depth``: detections not yet acknowledged, ``spool_dropped``: dropped
    because the spool was full; ``cpu_percent`` of one core since the last heartbeat.
    """

    sensor_id: str
    t_ns: int
    uptime_s: float
    noise_floor_dbfs: float | None
    clipped_samples: int
    nonfinite_blocks: int
    overflows: int
    detections: int
    clock_source: str
    clock_locked: bool
    clock_sigma_ns: int
    clock_ppm: float | None
    spool_depth: int
    spool_dropped: int
    cpu_percent: float
    model: str
    model_sha256: str
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_HB_FIELDS = {f.name for f in fields(Heartbeat)}
_HB_OPTIONAL = {"lat", "lon", "alt_m"}


def heartbeat_from_dict(d: Any) -> Heartbeat:
    if not isinstance(d, dict):
        raise ContractError(f"heartbeat must be an object, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in _HB_FIELDS)
    if unknown:
        raise ContractError(f"unknown key(s): {', '.join(unknown)}")
    missing = sorted(k for k in _HB_FIELDS - _HB_OPTIONAL if k not in d)
    if missing:
        raise ContractError(f"missing key(s): {', '.join(missing)}")
    sid = d["sensor_id"]
    if not isinstance(sid, str) or not _SENSOR_ID.match(sid):
        raise ContractError(f"sensor_id must match {_SENSOR_ID.pattern}, got {sid!r}")
    if d["clock_source"] not in CLOCK_SOURCES:
        raise ContractError(f"clock_source must be one of {CLOCK_SOURCES}, got {d['clock_source']!r}")
    if not isinstance(d["clock_locked"], bool):
        raise ContractError("clock_locked must be true or false")
    for k in ("model", "model_sha256"):
        if not isinstance(d[k], str) or len(d[k]) > 128:
            raise ContractError(f"{k} must be a string of at most 128 characters")
    big = 2**63 - 1
    return Heartbeat(
        sensor_id=sid, t_ns=_int(d, "t_ns", T_NS_MIN, T_NS_MAX), uptime_s=_float(d, "uptime_s", 0, 1e10),
        noise_floor_dbfs=_float(d, "noise_floor_dbfs", -400.0, 10.0, optional=True),
        clipped_samples=_int(d, "clipped_samples", 0, big), nonfinite_blocks=_int(d, "nonfinite_blocks", 0, big),
        overflows=_int(d, "overflows", 0, big), detections=_int(d, "detections", 0, big),
        clock_source=d["clock_source"], clock_locked=d["clock_locked"],
        clock_sigma_ns=_int(d, "clock_sigma_ns", 0, 3600 * NS_PER_S),
        clock_ppm=_float(d, "clock_ppm", -1e4, 1e4, optional=True),
        spool_depth=_int(d, "spool_depth", 0, big), spool_dropped=_int(d, "spool_dropped", 0, big),
        cpu_percent=_float(d, "cpu_percent", 0.0, 1e5), model=d["model"], model_sha256=d["model_sha256"],
        lat=_float(d, "lat", -90.0, 90.0, optional=True), lon=_float(d, "lon", -180.0, 180.0, optional=True),
        alt_m=_float(d, "alt_m", -1000.0, 10000.0, optional=True))
