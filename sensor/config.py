"""node.toml: a field node's configuration, validated at start.

Every key has a unit in its name where it has a unit; unknown tables and keys are
refused with a message naming them, so a misspelt ``heartbeat_sec`` is caught before the
node goes up a pole. ``shotnet sensor run --config node.toml --print-config`` prints the
effective configuration (defaults filled in); ``--dry-run`` also opens every resource
(audio device, time source, spool, keys) and exits.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeSection:
    sensor_id: str = ""
    locator: str = "tcp://127.0.0.1:5560"       # the locator's ROUTER endpoint
    spool_path: str = "spool.sqlite"            # on-node store of unacknowledged detections
    spool_max_rows: int = 100_000
    resend_s: float = 2.0
    heartbeat_s: float = 10.0
    drain_on_stop_s: float = 10.0               # on SIGTERM, wait this long for acks
    model: str = ""                             # ONNX path; "" = the shipped model; "heuristic"


@dataclass(frozen=True)
class AudioSection:
    source: str = "mic"                         # mic | wav | scene
    device: str = ""                            # PortAudio device name or index ("" = default)
    fs_hz: int = 48000
    block_frames: int = 2400
    channels: int = 1
    wav_path: str = ""
    wav_t0_ns: int = 0                          # time of the file's first sample
    scene_dir: str = ""
    realtime: bool = False                      # pace a file or scene to real time


@dataclass(frozen=True)
class ClockSection:
    source: str = "system"                      # gps | ptp | chrony | system
    gpsd_host: str = "127.0.0.1"
    gpsd_port: int = 2947
    ptp_uds: str = "/var/run/ptp4l"
    ptp_apply_offset: bool = True               # ptp4l runs --free_running: apply its offset
    chrony_socket: str = ""                     # "" = chronyc's default
    fit_window_s: float = 240.0                 # audio-clock fit window
    system_sigma_ns: int = 10_000_000           # claimed 1-sigma of an undisciplined clock
    holdover_ppm: float = 10.0                  # sigma growth after the source is lost


@dataclass(frozen=True)
class PositionSection:
    surveyed: bool = False                      # use lat/lon/alt below (else gpsd's fix)
    lat_deg: float = 0.0
    lon_deg: float = 0.0
    alt_m: float = 0.0


@dataclass(frozen=True)
class PrivacySection:
    clip_pre_s: float = 1.0                     # audio before the onset sent with a gunshot
    clip_post_s: float = 0.45                   # after the onset (what the ring holds then)
    clip_max_s: float = 2.0                     # hard cap on one clip
    clip_labels: tuple[str, ...] = ("gunshot",)  # only these labels carry a clip


@dataclass(frozen=True)
class SecuritySection:
    curve_secret_key_file: str = ""             # this node's <sensor_id>.key_secret
    server_public_key_file: str = ""            # the locator's locator.key


@dataclass(frozen=True)
class NodeFileConfig:
    node: NodeSection = NodeSection()
    audio: AudioSection = AudioSection()
    clock: ClockSection = ClockSection()
    position: PositionSection = PositionSection()
    privacy: PrivacySection = PrivacySection()
    security: SecuritySection = SecuritySection()


def check_table(table: dict, cls, where: str) -> dict:
    """Validate one TOML table against a frozen dataclass of defaults: unknown keys and
    wrong types are refused with a message naming them. Returns the converted values."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = {}
    for k, v in table.items():
        default = getattr(cls, k) if hasattr(cls, k) else None
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise ValueError(f"{where}.{k} must be true or false, got {v!r}")
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{where}.{k} must be a number, got {v!r}")
            v = float(v)
        elif isinstance(default, int):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where}.{k} must be an integer, got {v!r}")
        elif isinstance(default, str):
            if not isinstance(v, str):
                raise ValueError(f"{where}.{k} must be a string, got {v!r}")
        elif isinstance(default, tuple):
            if not isinstance(v, list):
                raise ValueError(f"{where}.{k} must be a list, got {v!r}")
            v = tuple(v)
        out[k] = v
    return out


_SECTIONS = {f.name: f.default for f in dataclasses.fields(NodeFileConfig)}
_PATHS = {("node", "spool_path"), ("node", "model"), ("audio", "wav_path"), ("audio", "scene_dir"),
          ("security", "curve_secret_key_file"), ("security", "server_public_key_file")}


def parse(doc: dict, base: Path | None = None, where: str = "node.toml") -> NodeFileConfig:
    extra = sorted(set(doc) - set(_SECTIONS))
    if extra:
        raise ValueError(f"{where}: unknown table(s) {', '.join(extra)}; expected {', '.join(_SECTIONS)}")
    parts = {}
    for name, default in _SECTIONS.items():
        table = doc.get(name, {})
        if not isinstance(table, dict):
            raise ValueError(f"{where}: [{name}] must be a table")
        vals = check_table(table, type(default), name)
        if base is not None:
            for (sec, key) in _PATHS:
                if sec == name and vals.get(key) and vals[key] != "heuristic" and not Path(vals[key]).is_absolute():
                    vals[key] = str((base / vals[key]).resolve())
        parts[name] = dataclasses.replace(default, **vals)
    cfg = NodeFileConfig(**parts)
    validate(cfg, where)
    return cfg


def validate(cfg: NodeFileConfig, where: str = "node.toml") -> None:
    """Cross-field checks: each problem named with its table and key."""
    from .contract import _SENSOR_ID

    errs = []
    if not _SENSOR_ID.match(cfg.node.sensor_id or ""):
        errs.append(f"node.sensor_id must match {_SENSOR_ID.pattern}, got {cfg.node.sensor_id!r}")
    if cfg.audio.source not in ("mic", "wav", "scene"):
        errs.append(f"audio.source must be mic, wav or scene, got {cfg.audio.source!r}")
    if cfg.audio.source == "wav" and not cfg.audio.wav_path:
        errs.append("audio.wav_path is required when audio.source = \"wav\"")
    if cfg.audio.source == "scene" and not cfg.audio.scene_dir:
        errs.append("audio.scene_dir is required when audio.source = \"scene\"")
    if not 8000 <= cfg.audio.fs_hz <= 192000:
        errs.append(f"audio.fs_hz must be in 8000..192000, got {cfg.audio.fs_hz}")
    if not 64 <= cfg.audio.block_frames <= cfg.audio.fs_hz:
        errs.append(f"audio.block_frames must be in 64..fs_hz, got {cfg.audio.block_frames}")
    if cfg.clock.source not in ("gps", "ptp", "chrony", "system"):
        errs.append(f"clock.source must be gps, ptp, chrony or system, got {cfg.clock.source!r}")
    if cfg.privacy.clip_pre_s < 0 or cfg.privacy.clip_post_s < 0:
        errs.append("privacy.clip_pre_s and clip_post_s must be >= 0")
    if cfg.privacy.clip_pre_s + cfg.privacy.clip_post_s > cfg.privacy.clip_max_s:
        errs.append(f"privacy: clip_pre_s + clip_post_s = {cfg.privacy.clip_pre_s + cfg.privacy.clip_post_s} s "
                    f"exceeds clip_max_s = {cfg.privacy.clip_max_s} s")
    if cfg.privacy.clip_max_s > 4.0:
        errs.append("privacy.clip_max_s may not exceed 4 s: nodes never send continuous audio")
    if bool(cfg.security.curve_secret_key_file) != bool(cfg.security.server_public_key_file):
        errs.append("security: set both curve_secret_key_file and server_public_key_file, or neither")
    if cfg.node.spool_max_rows < 100:
        errs.append("node.spool_max_rows must be at least 100")
    if cfg.node.heartbeat_s <= 0:
        errs.append("node.heartbeat_s must be positive")
    if errs:
        raise ValueError(f"{where}: " + "; ".join(errs))


def load(path: str | Path) -> NodeFileConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return parse(doc, path.parent, str(path))


def toml_value(v) -> str:
    """A config value as TOML (for ``--print-config`` of the node and the locator)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def to_toml(cfg: NodeFileConfig) -> str:
    fmt = toml_value
    lines = []
    for f in dataclasses.fields(cfg):
        sec = getattr(cfg, f.name)
        lines += [f"[{f.name}]"] + [f"{g.name} = {fmt(getattr(sec, g.name))}" for g in dataclasses.fields(sec)] + [""]
    return "\n".join(lines)
