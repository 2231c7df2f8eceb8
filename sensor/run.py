"""``shotnet sensor run``: one sensor node as a process.

In the field: ``shotnet sensor run --config node.toml`` (see :mod:`shotnet.sensor.config`;
``--print-config`` shows the effective configuration, ``--dry-run`` opens every resource
and exits). Live capture goes through sounddevice; ``t_ns`` comes from the sample index
through the fitted audio clock (:class:`~shotnet.sensor.clock.FittedSampleClock`),
disciplined by the configured time source (gps, ptp, chrony or system). Detections go
into the SQLite spool and out over ZeroMQ (CURVE if keys are configured); heartbeats
every ``heartbeat_s``. SIGTERM stops capture, flushes the detector and waits up to
``drain_on_stop_s`` for the spool to drain; what is left stays spooled for next start.

For simulation and tests the same node runs from flags: ``--scene DIR --sensor-id ID``
(a simulated scene's track, rendered in memory), ``--wav FILE --t0-ns T`` (a recording
whose first sample was taken at ``T``), or ``--mic``. With ``--wait-start`` the node
renders its track, prints ``READY`` and waits for ``START <t_ns>`` on stdin, then plays
the track paced to real time from that instant (how the demo starts two dozen nodes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import resource
import signal
import sys
import time
from collections import deque

import numpy as np

from . import config as nodeconf
from . import nodekernels
from .classify import load_classifier
from .clock import ClockQuality, FittedSampleClock, LinearSampleClock
from .contract import Heartbeat
from .node import NodeConfig, NodeCore
from .spool import Spool
from .timesources import make_time_source
from .transport import CurveKeys, DetectionSender

log = logging.getLogger(__name__)


class HealthMonitor:
    """Noise floor (10th percentile of block RMS over the last ``window_s``, dBFS) and CPU."""

    def __init__(self, fs_hz: int, block_frames: int, window_s: float = 60.0):
        self.levels: deque = deque(maxlen=max(10, int(window_s * fs_hz / block_frames)))
        self.t_start = time.monotonic()
        self._cpu_last = (time.monotonic(), self._cpu_s())

    @staticmethod
    def _cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def block(self, x: np.ndarray) -> None:
        if len(x) and np.all(np.isfinite(x)):
            rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
            self.levels.append(20 * math.log10(max(rms, 1e-10)))

    def noise_floor_dbfs(self) -> float | None:
        return round(float(np.percentile(self.levels, 10)), 1) if self.levels else None

    def cpu_percent(self) -> float:
        now, cpu = time.monotonic(), self._cpu_s()
        t0, c0 = self._cpu_last
        self._cpu_last = (now, cpu)
        return round(100.0 * (cpu - c0) / max(now - t0, 1e-6), 1)


class FieldNode:
    """One node: source -> clock -> detector -> spool -> locator, with heartbeats."""

    def __init__(self, cfg: nodeconf.NodeFileConfig, *, ctx=None, source=None, time_source=None,
                 clock=None, spool: Spool | None = None):
        self.cfg = cfg
        self.classifier = load_classifier(cfg.node.model or None)
        self.time_source = time_source or self._make_time_source()
        self.source = source or self._make_source()
        fs = int(self.source.fs_hz)
        if clock is None:
            if cfg.audio.source == "mic":
                clock = FittedSampleClock(fs, self.time_source, cfg.clock.fit_window_s)
            else:
                clock = LinearSampleClock(self._t0_ns(), fs, self.time_source.quality())
        self.clock = clock
        self.spool = spool or Spool(cfg.node.spool_path, cfg.node.spool_max_rows)
        pos = (cfg.position.lat_deg, cfg.position.lon_deg, cfg.position.alt_m) if cfg.position.surveyed else None
        p = cfg.privacy
        self.core = NodeCore(NodeConfig(cfg.node.sensor_id, fs, position=pos, clip_pre_s=p.clip_pre_s,
                                        clip_post_s=p.clip_post_s, clip_labels=tuple(p.clip_labels)),
                             self.clock, self.classifier, first_seq=self.spool.next_seq())
        curve = None
        if cfg.security.curve_secret_key_file:
            curve = CurveKeys.load(cfg.security.curve_secret_key_file, cfg.security.server_public_key_file)
        self.sender = DetectionSender(cfg.node.locator, cfg.node.sensor_id, ctx=ctx, resend_s=cfg.node.resend_s,
                                      spool=self.spool, curve=curve)
        self.health = HealthMonitor(fs, cfg.audio.block_frames)
        self._stop = False
        self._next_hb = 0.0
        self.wrong_rate = False

    # ------------------------------------------------------------------ construction
    def _make_time_source(self):
        c = self.cfg.clock
        if c.source == "gps":
            return make_time_source("gps", host=c.gpsd_host, port=c.gpsd_port, holdover_ppm=c.holdover_ppm)
        if c.source == "ptp":
            return make_time_source("ptp", uds=c.ptp_uds, apply_offset=c.ptp_apply_offset,
                                    holdover_ppm=c.holdover_ppm)
        if c.source == "chrony":
            return make_time_source("chrony", socket_path=c.chrony_socket or None, holdover_ppm=c.holdover_ppm)
        return make_time_source("system", sigma_ns=c.system_sigma_ns)

    def _make_source(self):
        a = self.cfg.audio
        if a.source == "mic":
            from .sources import MicSource

            dev = int(a.device) if a.device.isdigit() else (a.device or None)
            return MicSource(a.fs_hz, device=dev, channels=a.channels)
        if a.source == "wav":
            from .sources import WavSource

            return WavSource(a.wav_path, realtime_t0_ns=time.time_ns() if a.realtime else None)
        from .scene import load_scene_spec
        from .sources import SceneSource

        scene = load_scene_spec(a.scene_dir)
        src = SceneSource(scene, self.cfg.node.sensor_id, realtime=a.realtime)
        return src

    def _t0_ns(self) -> int:
        a = self.cfg.audio
        if a.source == "scene":
            return int(self.source.t_start_ns)
        return a.wav_t0_ns or time.time_ns()

    # ------------------------------------------------------------------ running
    def stop(self, *_) -> None:
        self._stop = True
        if hasattr(self.source, "stop"):
            self.source.stop()

    def heartbeat(self) -> Heartbeat:
        q = self.clock.quality() if getattr(self.clock, "ready", True) else self.time_source.quality()
        pos = None
        if self.cfg.position.surveyed:
            pos = (self.cfg.position.lat_deg, self.cfg.position.lon_deg, self.cfg.position.alt_m)
        elif getattr(self.time_source, "position", None):
            pos = self.time_source.position
        st = self.core.stats
        return Heartbeat(
            sensor_id=self.cfg.node.sensor_id, t_ns=time.time_ns() + self.time_source.correction_ns(),
            uptime_s=round(time.monotonic() - self.health.t_start, 1),
            noise_floor_dbfs=self.health.noise_floor_dbfs(), clipped_samples=st.clipped_samples,
            nonfinite_blocks=st.nonfinite_blocks, overflows=int(getattr(self.source, "overflows", 0)),
            detections=st.detections, clock_source=q.source, clock_locked=q.locked, clock_sigma_ns=q.sigma_ns,
            clock_ppm=round(self.clock.ppm, 3) if hasattr(self.clock, "ppm") else None,
            spool_depth=self.spool.depth(), spool_dropped=self.spool.dropped,
            cpu_percent=self.health.cpu_percent(), model=self.classifier.name, model_sha256=self.classifier.sha256,
            lat=pos[0] if pos else None, lon=pos[1] if pos else None, alt_m=pos[2] if pos else None)

    def _maybe_heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_hb:
            self._next_hb = now + self.cfg.node.heartbeat_s
            self.sender.send_heartbeat(self.heartbeat().to_dict())

    def run(self, max_blocks: int | None = None) -> dict:
        fs = int(self.source.fs_hz)
        if fs != self.cfg.audio.fs_hz and self.cfg.audio.source == "mic":
            raise ValueError(f"{self.cfg.node.sensor_id}: the device runs at {fs} Hz, node.toml says "
                             f"{self.cfg.audio.fs_hz} Hz")
        n = 0
        for blk in self.source.blocks(self.cfg.audio.block_frames):
            if isinstance(self.clock, FittedSampleClock) and blk.wall_ns is not None:
                self.clock.one_sided = not blk.wall_exact
                self.clock.observe(blk.index, blk.wall_ns)
            self.health.block(blk.samples)
            for det in self.core.feed(blk.samples):
                self.sender.send(det)
            self.sender.poll(0)
            self.time_source.poll()
            self._maybe_heartbeat()
            n += 1
            if self._stop or (max_blocks is not None and n >= max_blocks):
                break
        for det in self.core.flush():
            self.sender.send(det)
        self.sender.send_heartbeat(self.heartbeat().to_dict())
        drained = self.sender.drain(self.cfg.node.drain_on_stop_s)
        return {"sensor_id": self.cfg.node.sensor_id, "model": self.classifier.name,
                "model_sha256": self.classifier.sha256, "stats": dataclasses.asdict(self.core.stats),
                "sent": self.sender.sent, "resent": self.sender.resent, "acked": self.sender.acked,
                "unacked": self.spool.depth(), "spool_dropped": self.spool.dropped, "drained": drained,
                "overflows": int(getattr(self.source, "overflows", 0))}

    def close(self) -> None:
        self.sender.close()
        self.time_source.close()
        self.spool.close()


def _config_from_flags(args) -> nodeconf.NodeFileConfig:
    c = nodeconf.NodeFileConfig()
    kind = "scene" if args.scene else "wav" if args.wav else "mic"
    a = dataclasses.replace(c.audio, source=kind, scene_dir=args.scene or "", wav_path=args.wav or "",
                            wav_t0_ns=args.t0_ns or 0, fs_hz=args.fs_hz, realtime=bool(args.realtime),
                            block_frames=args.block_frames)
    n = dataclasses.replace(c.node, sensor_id=args.sensor_id or "", locator=args.connect,
                            spool_path=args.spool or ":memory:", model=args.model or "",
                            heartbeat_s=args.heartbeat_s)
    # A recording with its start time given (--t0-ns) is as good as that time: say 0.1 ms
    # unless told; an undisciplined system clock keeps the default 10 ms.
    sigma = args.clock_sigma_ns if args.clock_sigma_ns is not None else (
        100_000 if (args.wav and args.t0_ns) else c.clock.system_sigma_ns)
    clk = dataclasses.replace(c.clock, source=args.clock, system_sigma_ns=sigma)
    return dataclasses.replace(c, node=n, audio=a, clock=clk)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="shotnet sensor run", description="Run one sensor node.")
    ap.add_argument("--config", help="node.toml (see the README); the flags below are for simulation and tests")
    ap.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    ap.add_argument("--dry-run", action="store_true", help="validate, open every resource, and exit")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--scene", help="folder of a simulated scene (scene.json + sensors.geojson)")
    src.add_argument("--wav", help="a recording to play through the node")
    src.add_argument("--mic", action="store_true", help="live capture through sounddevice")
    ap.add_argument("--sensor-id")
    ap.add_argument("--connect", default="tcp://127.0.0.1:5560", help="locator ROUTER endpoint")
    ap.add_argument("--t0-ns", type=int, default=None, help="time of the first sample (--wav)")
    ap.add_argument("--fs-hz", type=int, default=48000, help="capture rate (--mic)")
    ap.add_argument("--block-frames", type=int, default=2400)
    ap.add_argument("--clock", default="system", choices=("system", "gps", "ptp", "chrony"))
    ap.add_argument("--clock-sigma-ns", type=int, default=None,
                    help="claimed 1-sigma of the system clock (default 10 ms; 0.1 ms for --wav with --t0-ns)")
    ap.add_argument("--spool", default=None, help="SQLite spool file (default: in memory)")
    ap.add_argument("--heartbeat-s", type=float, default=10.0)
    ap.add_argument("--model", default=None, help="ONNX model path, or 'heuristic'")
    ap.add_argument("--realtime", action="store_true", help="pace a scene or file to real time")
    ap.add_argument("--wait-start", action="store_true", help="print READY, wait for 'START <t_ns>' on stdin")
    args = ap.parse_args(argv)
    try:
        if args.config:
            cfg = nodeconf.load(args.config)
        else:
            if not (args.scene or args.wav or args.mic):
                ap.error("give --config node.toml, or one of --scene, --wav, --mic")
            cfg = _config_from_flags(args)
            nodeconf.validate(cfg, "flags")
    except (ValueError, OSError) as exc:
        print(f"shotnet sensor run: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(nodeconf.to_toml(cfg), end="")
        return 0
    try:
        node = FieldNode(cfg)
    except (ValueError, OSError) as exc:
        print(f"shotnet sensor run: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        q = node.time_source.quality()
        print(json.dumps({"sensor_id": cfg.node.sensor_id, "source": cfg.audio.source, "fs_hz": node.source.fs_hz,
                          "clock": {"source": q.source, "locked": q.locked, "sigma_ns": q.sigma_ns},
                          "spool": {"path": cfg.node.spool_path, "depth": node.spool.depth(),
                                    "next_seq": node.spool.next_seq()},
                          "curve": bool(cfg.security.curve_secret_key_file), "model": node.classifier.name,
                          "kernels": nodekernels.COMPILED}))
        node.close()
        return 0
    signal.signal(signal.SIGTERM, node.stop)
    signal.signal(signal.SIGINT, node.stop)
    if args.wait_start and cfg.audio.source == "scene":
        print("READY", flush=True)
        line = sys.stdin.readline().split()
        if len(line) != 2 or line[0] != "START":
            print(f"expected 'START <t_ns>', got {line!r}", file=sys.stderr)
            return 2
        t0 = int(line[1])
        node.source.realtime_t0_ns = t0
        node.clock = LinearSampleClock(t0, node.source.fs_hz, ClockQuality("sim", True, 1000))
        node.core.clock = node.clock
    elif cfg.audio.source == "scene":
        node.clock = LinearSampleClock(node.source.t_start_ns, node.source.fs_hz, ClockQuality("sim", True, 1000))
        node.core.clock = node.clock
    try:
        summary = node.run()
    except ValueError as exc:
        print(f"shotnet sensor run: {exc}", file=sys.stderr)
        node.close()
        return 2
    node.close()
    print(json.dumps(summary), file=sys.stderr, flush=True)
    return 0
