"""Where a node's wall time comes from, and how good it is.

A node timestamps samples with the system wall clock (through the fitted sample clock,
:class:`~shotnet.sensor.clock.FittedSampleClock`) plus a correction, and every detection
carries the time quality: source, locked or not, 1-sigma uncertainty in ns. The locator
weights detections by that sigma and excludes unsynchronised ones.

- :class:`GpsdTime` reads gpsd's JSON (TPV: fix mode and position; TOFF and PPS: the
  GPS second against the system clock). The system clock itself is disciplined by chrony
  from gpsd (SHM/PPS); this source says whether the fix and time are there, and gives
  the node its surveyed-by-GPS position.
- :class:`PtpTime` asks linuxptp's ptp4l through ``pmc`` for the offset from the master,
  the path delay and the port state. When ptp4l runs ``--free_running`` (it measures but
  never steers the clock: this is how we test it, and how a node that shares its clock
  with other services can run) the node applies the measured offset itself.
- :class:`ChronyTime` parses ``chronyc -c tracking``: reference, stratum, offset, root
  delay and dispersion, leap status.
- :class:`SystemTime`: the plain system clock, unlocked, 10 ms sigma by default: a last
  resort; such detections are stored but not used to locate (locator's
  ``max_clock_sigma_ms``).

Each source is polled in the node's loop (``poll()``, cheap, rate-limited), so a lost
source shows up within seconds: ``locked`` goes false and the sigma grows at the holdover
rate (``holdover_ppm``) from the last good state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque

from .clock import ClockQuality

log = logging.getLogger(__name__)


class TimeSource:
    """Interface: ``correction_ns()`` to add to the system wall clock, ``quality()``."""

    name = "system"

    def correction_ns(self) -> int:
        return 0

    def quality(self) -> ClockQuality:
        raise NotImplementedError

    def poll(self) -> None:
        pass

    def _due(self) -> bool:
        """Rate limit for polled sources: True at most once per ``poll_s``."""
        now = time.monotonic()
        if now < getattr(self, "_next", 0.0):
            return False
        self._next = now + self.poll_s
        return True

    def close(self) -> None:
        pass

    def state(self) -> dict:
        q = self.quality()
        return {"source": q.source, "locked": q.locked, "sigma_ns": q.sigma_ns}


class SystemTime(TimeSource):
    def __init__(self, sigma_ns: int = 10_000_000):
        self.sigma_ns = int(sigma_ns)

    def quality(self) -> ClockQuality:
        return ClockQuality("system", False, self.sigma_ns)


class _Holdover:
    """Sigma that grows from the last locked value at ``ppm`` while unlocked."""

    def __init__(self, ppm: float, unlocked_sigma_ns: int):
        self.ppm = ppm
        self.unlocked_sigma_ns = unlocked_sigma_ns
        self.last_good: tuple[float, int] | None = None   # (monotonic s, sigma ns)

    def good(self, sigma_ns: int) -> None:
        self.last_good = (time.monotonic(), int(sigma_ns))

    def sigma(self) -> int:
        if self.last_good is None:
            return self.unlocked_sigma_ns
        age = time.monotonic() - self.last_good[0]
        return min(self.unlocked_sigma_ns, int(self.last_good[1] + age * self.ppm * 1e3))


class GpsdTime(TimeSource):
    """gpsd over its JSON socket (``?WATCH={"enable":true,"json":true,"pps":true}``).

    A reader thread keeps the newest TPV (mode, time, position, ``ept``) and the recent
    TOFF/PPS offsets (GPS time minus system time when the second began). Locked: a 2-D or
    3-D fix and a time report within ``stale_s``. Sigma: with PPS, the spread of the PPS
    offsets (sub-microsecond with a kernel PPS); with NMEA time only, the spread of the
    TOFF offsets plus gpsd's ``ept`` — milliseconds, honestly reported.
    """

    name = "gps"

    def __init__(self, host: str = "127.0.0.1", port: int = 2947, stale_s: float = 3.0,
                 holdover_ppm: float = 10.0, unlocked_sigma_ns: int = 10_000_000):
        self.host, self.port, self.stale_s = host, int(port), stale_s
        self._lock = threading.Lock()
        self.mode = 0
        self.position: tuple[float, float, float] | None = None
        self.ept_s: float | None = None
        self._toff: deque = deque(maxlen=30)
        self._pps: deque = deque(maxlen=30)
        self._last_time = 0.0
        self.reports = {"TPV": 0, "TOFF": 0, "PPS": 0, "bad": 0}
        self.connected = False
        self._hold = _Holdover(holdover_ppm, unlocked_sigma_ns)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpsd", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection((self.host, self.port), timeout=2.0) as s:
                    s.sendall(b'?WATCH={"enable":true,"json":true,"pps":true};\n')
                    self.connected = True
                    buf = b""
                    while not self._stop.is_set():
                        try:
                            chunk = s.recv(65536)
                        except socket.timeout:
                            continue
                        if not chunk:
                            break
                        buf += chunk
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            self._handle(line)
            except OSError as exc:
                log.debug("gpsd %s:%d: %s", self.host, self.port, exc)
            self.connected = False
            self._stop.wait(1.0)

    def _handle(self, line: bytes) -> None:
        try:
            d = json.loads(line)
            cls = d.get("class")
        except (ValueError, AttributeError):
            self.reports["bad"] += 1
            return
        with self._lock:
            if cls == "TPV":
                self.reports["TPV"] += 1
                self.mode = int(d.get("mode", 0))
                if self.mode >= 2 and "lat" in d and "lon" in d:
                    alt = d.get("altHAE", d.get("alt", 0.0))
                    self.position = (float(d["lat"]), float(d["lon"]), float(alt))
                if "ept" in d:
                    self.ept_s = float(d["ept"])
                if "time" in d:
                    self._last_time = time.monotonic()
            elif cls in ("TOFF", "PPS"):
                self.reports[cls] += 1
                off = (int(d["real_sec"]) - int(d["clock_sec"])) * 1_000_000_000 + \
                    int(d["real_nsec"]) - int(d["clock_nsec"])
                (self._pps if cls == "PPS" else self._toff).append(off)
                self._last_time = time.monotonic()

    def offsets_ns(self) -> list[int]:
        with self._lock:
            return list(self._pps or self._toff)

    def quality(self) -> ClockQuality:
        with self._lock:
            fresh = time.monotonic() - self._last_time <= self.stale_s
            locked = self.mode >= 2 and fresh and bool(self._toff or self._pps)
            offs = list(self._pps or self._toff)
            pps = bool(self._pps)
            ept = self.ept_s or 0.0
        if not locked:
            return ClockQuality("gps", False, self._hold.sigma())
        spread = _robust_sd(offs)
        sigma = int(math.hypot(spread, 0.0 if pps else ept * 1e9)) or 1
        self._hold.good(sigma)
        return ClockQuality("gps", True, sigma)

    def state(self) -> dict:
        out = super().state()
        out.update(mode=self.mode, position=self.position, reports=dict(self.reports))
        return out

    def close(self) -> None:
        self._stop.set()


class PtpTime(TimeSource):
    """linuxptp: ``pmc -u -b 0 -s <ptp4l uds>`` every ``poll_s``.

    Reads offsetFromMaster (ns, slave minus master), meanPathDelay, gmPresent and the
    port state. Locked: a grandmaster is present, the port is SLAVE or UNCALIBRATED (a
    free-running slave stays UNCALIBRATED by design) and the answer is fresh. When
    ``apply_offset`` (ptp4l runs ``--free_running``), ``correction_ns`` is minus the
    median recent offset. Sigma: the robust spread of recent offsets plus a quarter of
    the path delay (unmodelled asymmetry).
    """

    name = "ptp"

    def __init__(self, uds: str = "/var/run/ptp4l", poll_s: float = 1.0, apply_offset: bool = True,
                 netns: str | None = None, holdover_ppm: float = 10.0, unlocked_sigma_ns: int = 10_000_000,
                 stale_s: float = 5.0):
        self.uds, self.poll_s, self.apply_offset, self.netns = uds, poll_s, apply_offset, netns
        self.stale_s = stale_s
        self._offsets: deque = deque(maxlen=16)
        self.path_delay_ns = 0.0
        self.port_state = "UNKNOWN"
        self.gm_present = False
        self._last_ok = -1e9
        self._next = 0.0
        self.errors = 0
        self._hold = _Holdover(holdover_ppm, unlocked_sigma_ns)
        self._client = os.path.join(tempfile.gettempdir(), f"shotnet-pmc-{os.getpid()}-{id(self)}")

    def query(self) -> dict:
        cmd = ["pmc", "-u", "-b", "0", "-s", self.uds, "-i", self._client,
               "GET CURRENT_DATA_SET", "GET TIME_STATUS_NP", "GET PORT_DATA_SET"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
        return parse_pmc(out)

    def poll(self) -> None:
        if not self._due():
            return
        try:
            d = self.query()
        except (OSError, subprocess.SubprocessError) as exc:
            self.errors += 1
            log.warning("pmc: %s", exc)
            return
        if "offsetFromMaster" not in d:
            self.errors += 1
            return
        self._offsets.append(float(d["offsetFromMaster"]))
        self.path_delay_ns = float(d.get("meanPathDelay", 0.0))
        self.port_state = d.get("portState", "UNKNOWN")
        self.gm_present = d.get("gmPresent") == "true"
        self._last_ok = time.monotonic()

    def correction_ns(self) -> int:
        if not self.apply_offset or not self._offsets:
            return 0
        return -int(round(sorted(self._offsets)[len(self._offsets) // 2]))

    def quality(self) -> ClockQuality:
        fresh = time.monotonic() - self._last_ok <= self.stale_s
        locked = fresh and self.gm_present and self.port_state in ("SLAVE", "UNCALIBRATED")
        if not locked:
            return ClockQuality("ptp", False, self._hold.sigma())
        sigma = int(math.hypot(_robust_sd(list(self._offsets)), self.path_delay_ns / 4)) or 1
        self._hold.good(sigma)
        return ClockQuality("ptp", True, sigma)

    def state(self) -> dict:
        out = super().state()
        out.update(port_state=self.port_state, gm_present=self.gm_present,
                   offset_ns=self._offsets[-1] if self._offsets else None, path_delay_ns=self.path_delay_ns)
        return out


def parse_pmc(text: str) -> dict:
    """``pmc`` answers as ``name value`` lines; keep the last value of each name."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("sending"):
            out[parts[0]] = parts[1]
    return out


TRACKING_FIELDS = ("ref_id", "ref_name", "stratum", "ref_time_s", "system_offset_s", "last_offset_s",
                   "rms_offset_s", "freq_ppm", "resid_freq_ppm", "skew_ppm", "root_delay_s",
                   "root_dispersion_s", "update_interval_s", "leap_status")


def parse_tracking(csv_line: str) -> dict:
    parts = csv_line.strip().split(",")
    if len(parts) != len(TRACKING_FIELDS):
        raise ValueError(f"chronyc tracking: expected {len(TRACKING_FIELDS)} fields, got {len(parts)}")
    d: dict = dict(zip(TRACKING_FIELDS, parts))
    for k in TRACKING_FIELDS[2:-1]:
        d[k] = float(d[k])
    d["stratum"] = int(d["stratum"])
    return d


class ChronyTime(TimeSource):
    """chrony: ``chronyc [-h socket] -c tracking`` every ``poll_s``.

    Locked: leap status not "Not synchronised" and stratum below 16. Sigma: chrony's own
    error bound, |system offset| + root dispersion + root delay / 2."""

    name = "chrony"

    def __init__(self, socket_path: str | None = None, poll_s: float = 2.0, holdover_ppm: float = 10.0,
                 unlocked_sigma_ns: int = 10_000_000, stale_s: float = 10.0):
        self.socket_path, self.poll_s, self.stale_s = socket_path, poll_s, stale_s
        self.tracking: dict | None = None
        self._last_ok = -1e9
        self._next = 0.0
        self.errors = 0
        self._hold = _Holdover(holdover_ppm, unlocked_sigma_ns)

    def query(self) -> dict:
        cmd = ["chronyc"] + (["-h", self.socket_path] if self.socket_path else []) + ["-c", "tracking"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        if res.returncode != 0:
            raise OSError(res.stderr.strip() or f"chronyc exited {res.returncode}")
        return parse_tracking(res.stdout)

    def poll(self) -> None:
        if not self._due():
            return
        try:
            self.tracking = self.query()
            self._last_ok = time.monotonic()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.errors += 1
            log.warning("chronyc: %s", exc)

    def quality(self) -> ClockQuality:
        t = self.tracking
        fresh = time.monotonic() - self._last_ok <= self.stale_s
        if not fresh or t is None or t["leap_status"] == "Not synchronised" or t["stratum"] >= 16:
            return ClockQuality("chrony", False, self._hold.sigma())
        err_s = abs(t["system_offset_s"]) + t["root_dispersion_s"] + t["root_delay_s"] / 2
        sigma = max(1, int(err_s * 1e9))
        self._hold.good(sigma)
        return ClockQuality("chrony", True, sigma)

    def state(self) -> dict:
        out = super().state()
        if self.tracking:
            out.update(ref_name=self.tracking["ref_name"], stratum=self.tracking["stratum"],
                       leap_status=self.tracking["leap_status"])
        return out


def _robust_sd(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    v = sorted(values)
    med = v[len(v) // 2]
    dev = sorted(abs(x - med) for x in v)
    return 1.4826 * dev[len(dev) // 2]


def make_time_source(kind: str, **kw) -> TimeSource:
    kinds = {"system": SystemTime, "gps": GpsdTime, "ptp": PtpTime, "chrony": ChronyTime}
    if kind not in kinds:
        raise ValueError(f"clock source must be one of {', '.join(kinds)}, got {kind!r}")
    return kinds[kind](**kw)
