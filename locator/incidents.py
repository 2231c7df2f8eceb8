"""Incidents: the rounds of one shooting, grouped.

Rounds within ``gap_s`` of an incident's last round and within ``radius_m`` of its
first round join it, up to ``max_span_s`` after its first round and ``max_rounds`` rounds
(a fireworks night fills every 300 m with a round every few seconds for hours: an
incident that never closed grew without bound, and so did the summary published with
each of its rounds; the rounds after start a new one). Each incident reports its round
count, the intervals between rounds, an automatic-fire flag (at least three rounds with
a median interval under ``auto_interval_s``, i.e. faster than a person can pull a
trigger, ~5 rounds/s), and a multiple-shooter flag (rounds from at least two places
further apart than ``shooter_sep_m`` and their 95% ellipses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from shotnet.sensor.contract import NS_PER_S, Event


class Round(NamedTuple):
    """What an incident keeps of a round (the latest version of its event)."""
    event_id: str
    t_ns: int
    label: str
    x_m: float
    y_m: float
    major_m: float          # the 95% ellipse's major semi-axis
    lat: float
    lon: float
    confidence: float
    test: bool

    @classmethod
    def of(cls, ev: Event) -> "Round":
        return cls(ev.event_id, ev.t_ns, ev.label, ev.x_m, ev.y_m, ev.ellipse95_m.major, ev.lat, ev.lon,
                   ev.confidence, ev.test)


@dataclass
class _Incident:
    incident_id: str
    x_m: float
    y_m: float
    first_t_ns: int
    last_t_ns: int
    n_assigned: int = 1
    rounds: dict = field(default_factory=dict)  # event_id -> Round


class IncidentTracker:
    def __init__(self, gap_s: float = 10.0, radius_m: float = 300.0, auto_interval_s: float = 0.2,
                 shooter_sep_m: float = 25.0, keep: int = 500, max_span_s: float = 120.0, max_rounds: int = 200):
        self.gap_s, self.radius_m = gap_s, radius_m
        self.auto_interval_s, self.shooter_sep_m = auto_interval_s, shooter_sep_m
        self.keep = keep
        self.max_span_s, self.max_rounds = max_span_s, max_rounds
        self._list: list[_Incident] = []

    def assign(self, event_id: str, t0_ns: int, x_m: float, y_m: float) -> str:
        """The incident a new round at (x, y, t0) belongs to (created if none)."""
        for inc in reversed(self._list):
            if (t0_ns - inc.last_t_ns <= self.gap_s * NS_PER_S and inc.first_t_ns - t0_ns <= self.gap_s * NS_PER_S
                    and math.hypot(x_m - inc.x_m, y_m - inc.y_m) <= self.radius_m
                    and max(t0_ns, inc.last_t_ns) - min(t0_ns, inc.first_t_ns) <= self.max_span_s * NS_PER_S
                    and inc.n_assigned < self.max_rounds):
                inc.last_t_ns = max(inc.last_t_ns, t0_ns)
                inc.first_t_ns = min(inc.first_t_ns, t0_ns)
                inc.n_assigned += 1
                return inc.incident_id
        inc = _Incident("inc-" + event_id[:16], x_m, y_m, t0_ns, t0_ns)
        self._list.append(inc)
        del self._list[:-self.keep]
        return inc.incident_id

    def update(self, ev: Event) -> dict | None:
        """Record (a version of) a round; returns the incident's summary."""
        for inc in reversed(self._list):
            if inc.incident_id == ev.incident_id:
                inc.rounds[ev.event_id] = Round.of(ev)
                return summarize(inc.incident_id, list(inc.rounds.values()), self.auto_interval_s, self.shooter_sep_m)
        return None


def summarize(incident_id: str, events: list[Round], auto_interval_s: float = 0.2, shooter_sep_m: float = 25.0) -> dict:
    evs = sorted(events, key=lambda e: e.t_ns)
    guns = [e for e in evs if e.label == "gunshot"]
    rounds = guns if guns else evs
    iv = [(b.t_ns - a.t_ns) / NS_PER_S for a, b in zip(rounds, rounds[1:])]
    med = sorted(iv)[len(iv) // 2] if iv else None
    automatic = len(rounds) >= 3 and med is not None and med <= auto_interval_s
    # Shooters: greedy clustering of round positions; two rounds are apart when their
    # distance exceeds the separation and both ellipses.
    centres: list[tuple[float, float, float]] = []
    for e in rounds:
        r = e.major_m
        for k, (cx, cy, cr) in enumerate(centres):
            if math.hypot(e.x_m - cx, e.y_m - cy) <= max(shooter_sep_m, r + cr):
                break
        else:
            centres.append((e.x_m, e.y_m, r))
    lat = sum(e.lat for e in rounds) / len(rounds)
    lon = sum(e.lon for e in rounds) / len(rounds)
    return {
        "incident_id": incident_id, "label": "gunshot" if guns else (evs[0].label if evs else "impulse"),
        "first_t_ns": rounds[0].t_ns, "last_t_ns": rounds[-1].t_ns, "rounds": len(rounds),
        "events": [e.event_id for e in rounds], "intervals_s": [round(v, 4) for v in iv],
        "automatic": bool(automatic), "shooters": len(centres), "multiple_shooters": len(centres) > 1,
        "lat": round(lat, 8), "lon": round(lon, 8),
        "max_confidence": max(e.confidence for e in rounds), "test": any(e.test for e in rounds),
    }
