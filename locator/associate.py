"""Association: turn a stream of detections from many sensors into located shots.

``Associator.feed(detection)`` in, ``Associator.step(now_ns)`` -> events out (the
SeisComP pattern: the core is separate from the messaging around it, and the clock is
injected, so ``shotnet locate`` on a file runs exactly the code the service runs live,
with ``now_ns`` = +infinity).

One step:

1. *Attach*: a pending detection whose time matches the predicted arrival of a recent
   event at its sensor (and whose sensor is not yet in it) joins that event; once the
   event has gained half as many detections again (or closes) it is re-solved and
   re-published as a new ``version`` with the same ``event_id``.
2. *Search*, seeded (as in REAL, Zhang et al. 2019): each pending detection in time
   order is tried as the first arrival of a shot, once sound could have reached the
   ``min_sensors - 1`` sensors nearest its own. The detections that can belong to the
   same shot are those within one shot-span after it that pass the pair gate
   (``|t_i - t_seed| <= |p_i - p_seed| / c`` + tolerance); when there are more than
   ``max_search``, those of the sensors nearest the seed's. A detection that an open
   event already explains (its arrival at a sensor no farther than those it uses, or
   that arrival's echo) is not tried as a seed while the event is open. Sources come
   first from triples: the seed and one detection at each of two of its nearest sensors
   fix a source in closed form (:func:`kernels.seed_hypotheses`), scored like a grid
   node by the distinct sensors with a detection near their predicted arrival (first on
   the sensors nearest the seed's, then the best few on more of them,
   ``hyp_full_sensors``). Only when no triple can be formed (too few neighbours with
   detections, or all in line with the seed's sensor) does the anchored grid search
   run (:func:`kernels.seed_coherence`, over the part of the region where the seed's
   sensor is among the nearest, several separate peaks refined to 1 m). For each sensor the
   detection closest to the predicted arrival is taken, within the disc around the
   source whose matched count is least likely by chance (far sensors, beyond hearing
   range, only add chance detections); a candidate must be unlikely as a chance
   alignment at the detection rates around it (a fireworks night asks for more
   sensors; the same test on the detections the nodes rated gunshots alone, at their
   own rate, may also accept: a gunshot among fireworks the classifier recognises), is
   solved robustly (:func:`locate.locate`), and must not be contradicted by nearer
   sensors that should have heard it. A detection serves at most one shot. A seed's
   outcome is remembered until a new detection lands in its window or its candidate
   matures, so each detection is searched a bounded number of times however long it
   waits. Seeds are searched sixteen at a time, in parallel, up to the chance pre-test
   (:func:`kernels.search_seeds`: the candidate's detections beyond the fit's three
   unknowns must already be unlikely by chance; a candidate large enough for the fit
   to estimate the wind too is pre-tested again with its five); the checks and solves
   then go in time order. When
   a step ran out of its time budget, the next one searches the gunshot-rated seeds
   first.
3. *Publish* once the solution is good (``min_sensors`` used, residual RMS under
   ``max_rms_s`` or 2.5 times the stated sigmas): alert as soon as a good solution exists; keep the event open for
   updates until sound could have reached every sensor in hearing range.
4. *Expire*: detections older than the array's crossing time that found no shot are
   dropped and counted as unassociated (false or single-sensor impulses).

The medium is learned from the shots: the regional wind (:meth:`Associator._learn_wind`)
and the speed of sound (:meth:`Associator._learn_c`), each the median of recent fits'
estimates, their uncertainty in every gate and ellipse; until the first, the configured
temperature with its ``temperature_sigma_c``.

Event ids are deterministic: a hash of the key (``sensor_id:seq``) of the earliest
detection the first published solution used (unique: a detection serves at most one
shot), so a replay or a second locator on the same stream produces the same ids. (The
three earliest, as before, made two locators disagree when one's first solution, found
at a slightly different moment, had dropped one of them.)
"""

from __future__ import annotations

import bisect
import collections
import copy
import hashlib
import itertools
import logging
import math
import operator
import time
from dataclasses import dataclass, field

import numpy as np

from shotnet.sensor.acoustics import speed_of_sound_m_per_s
from shotnet.sensor.contract import NS_PER_S, Detection, Ellipse, Event
from shotnet.sensor.layout import SensorLayout

from scipy.spatial import cKDTree

from . import kernels
from .incidents import IncidentTracker
from .locate import (_RANSAC_BELOW, Solution, _median, f_quantile, locate, locate_wind_robust,
                     wind_robust_on_arrays)

log = logging.getLogger(__name__)

NOW_INFINITE = 1 << 62
# The regional speed of sound: one measurement per half second of shots at most (a
# fireworks night fits dozens a second), at most this many kept, and never more certain
# than this (m/s): a survey's errors bias every shot's measurement alike, by a few tenths.
_C_EVERY_NS = NS_PER_S // 2
_C_MAX_ESTIMATES = 1000
_C_SD_FLOOR = 0.25
# Seeds asked again together, after a search found an event, whether an open event
# explains them (Associator._search).
_UNTIL_CHUNK = 64


@dataclass(frozen=True)
class AssocConfig:
    """Association and location parameters; units in the names."""

    temperature_c: float = 20.0
    source_height_m: float = 1.5         # above the median ground under the sensors
    min_sensors: int = 5
    margin_m: float = 500.0              # search this far outside the array's bounding box
    coarse_cell_m: float = 12.5          # the search grid: coarse cells over the region,
    fine_cell_m: float = 1.0             # refined by quarters down to this
    seed_region_m: float = 400.0         # a seed's sensor is at most this much farther from
                                         # the source than the nearest sensor
    refine_best: int = 8                 # separate coarse peaks refined per seed...
    refine_depth: int = 2                # ...among nodes at most this many sensors below the best
    hyp_neighbours: int = 6              # fast path: triples from the seed and two of its
    hyp_per_sensor: int = 12             # nearest sensors with detections (at most this many each);
    hyp_near: int = 12                   # each source scored first on this many sensors nearest
    hyp_full: int = 24                   # the seed's, and only the best this many on the
    hyp_full_sensors: int = 48           # this many nearest it (0: all; beyond, a city's sensors
                                         # hear other sounds only)
    hyp_wind_range_m: float = 300.0      # wind uncertainty allowed for over this range
    window_tol_s: float = 0.006          # added to the geometric window (picks, wind, survey)
    gate_s: float = 0.010                # max |residual| to attach a detection to a shot
    model_sigma_s: float = 3e-4          # model error added to each detection's sigma
    survey_sigma_m: float = 0.1          # 1-sigma error of each sensor's surveyed position
                                         # (also added, as distance over c)
    max_rms_s: float = 0.005             # a published solution must fit better than this
    max_chance_probability: float = 1e-4  # ...and its detections beyond the unknowns be this
                                         # unlikely to line up by chance
    settle_range_m: float = 700.0        # first solve waits until sound has passed this range...
    early_alert_sensors: int = 8         # ...unless this many sensors already heard it
    latency_slack_s: float = 0.5         # allowance for node processing and network delay
    aerial_min_sensors: int = 7          # try a 3-D solve (aerial fireworks) with this many
    aerial_min_height_m: float = 30.0    # above the assumed source height
    certain_snr_db: float = 25.0         # predicted SNR at which a sensor surely hears a shot
    late_allowance_s: float = 0.03       # a detection this late still shows a sensor heard
    max_silent_fraction: float = 0.2     # of nearer sensors (used or not) allowed to have missed a shot
    max_silent: int = 1                  # ...or this many, whichever is more
    masked_window_s: float = 0.3         # a sensor that triggered this soon before (the nodes'
    masked_db: float = 3.0               # echo window) at most this much quieter than the shot
                                         # would be there may have been masked
    echo_window_s: float = 0.3           # a weak solution this soon after a strong one...
    echo_radius_m: float = 150.0         # ...and this close to it is an echo, not a shot
    same_shot_s: float = 0.045           # two solutions this close in time and space (the
                                         # fastest automatic fire is ~50 ms a round)...
    same_shot_m: float = 15.0            # ...are one shot and get merged
    max_pending: int = 20000             # oldest pending detections beyond this are expired
    update_growth: float = 0.5           # re-solve an open event once it has gained this fraction
    max_search: int = 2000               # detections considered by one search (a crowded
                                         # window is filled from the seed's nearest sensors)
    overload_gunshots_first: bool = True  # when the search falls behind, seeds the nodes
                                         # rate likelier gunshots than not go first
    test_mode: bool = False              # events are marked as tests (calibration)
    max_clock_sigma_ms: float = 5.0      # detections with worse time are stored, not located
    wind_m_per_s: tuple[float, float] = (0.0, 0.0)  # initial regional wind (east, north)
    estimate_wind: bool = True           # solve for the wind when enough sensors heard a shot
    wind_min_sensors: int = 9
    wind_known: bool = False             # True if wind_m_per_s is a measurement
    max_wind_m_per_s: float = 6.0        # bound on the unknown wind, for gating
    wind_uncertainty_m_per_s: float = 1.5  # once estimated
    wind_history: int = 15               # the regional wind: median of this many recent estimates
    temperature_sigma_c: float = 3.0     # 1-sigma error of temperature_c (the air's, over the region;
                                         # 0: exact, and the speed of sound is not learned)
    estimate_c: bool = True              # learn the regional speed of sound from well-heard shots...
    c_min_sensors: int = 12              # ...fits using this many sensors (and the wind, if estimated)
    c_window_s: float = 600.0            # the regional speed of sound: median of the estimates from
    c_history: int = 15                  # shots in this window (the air's temperature drifts over
                                         # hours), and at least this many
    dedup_window_s: float = 120.0        # a detection whose key was fed this recently (in detection
                                         # time, behind the newest) is a duplicate (the service's
                                         # store recognises older ones)


@dataclass
class _Open:
    event: Event
    sol: Solution
    dets: list[Detection]
    close_at_ns: int
    t0_ns: int
    tried: dict = field(default_factory=dict)     # detections tried with it, by key
    arrivals: tuple | None = None     # (version, predicted arrival ns, gate ns, ...): _predict
    waiting: list = field(default_factory=list)   # joined, not yet solved with it...
    wait_s: list = field(default_factory=list)    # ...their sensor indices and times (ns)
    wait_t: list = field(default_factory=list)
    hearing: tuple | None = None      # (version, waiting, matched sensors, radius m): _choose_attached
    view: tuple | None = None         # what the attach step asks of it (attach_view), until that changes
    n_matched: int = -1               # how many pending detections matched it at the last attach step

    # (Tried and waiting change only through the methods below, the hearing cache only
    # through heard() and the version only in Associator._grow: each drops the view, or
    # heard() brings it up to date.)
    def attach_view(self) -> tuple:
        """What the attach step's kernels ask of it: the detections tried with it (their
        objects' ids) and the waiting ones' sensors and times (ns), as int64 arrays, and
        its hearing cache if it holds for this version and this many waiting (the matched
        sensors, the radius m, True; else none, 0.0, False). Kept until any of it
        changes: every step asks it of each event matching a pending detection (two
        dozen on a fireworks night), and most have not changed since the step before."""
        v = self.view
        if v is None:
            h = self.hearing
            ok = h is not None and h[0] == self.event.version and h[1] == len(self.waiting)
            v = self.view = (np.fromiter(map(id, self.tried.values()), dtype=np.int64, count=len(self.tried)),
                             np.array(self.wait_s, dtype=np.int64), np.array(self.wait_t, dtype=np.int64),
                             h[2] if ok else _NO_INDEX, h[3] if ok else 0.0, ok)
        return v

    def heard(self, mine: np.ndarray, radius_m: float) -> None:
        """The attach step worked out its hearing radius (m) and matched sensors for this
        version and this many waiting."""
        self.hearing = (self.event.version, len(self.waiting), mine, radius_m)
        if self.view is not None:
            self.view = self.view[:3] + (mine, radius_m, True)

    def add_tried(self, dets) -> None:
        """These were tried with it (and did not stay)."""
        self.tried.update((d.key, d) for d in dets)
        self.view = None

    def forget_tried(self, key: str) -> None:
        self.tried.pop(key, None)
        self.view = None

    def join(self, dets: list[Detection], sensors: list[int], times: list[int]) -> None:
        """These wait with it (their sensor indices and times, ns)."""
        self.waiting += dets
        self.wait_s += sensors
        self.wait_t += times
        self.view = None

    def give_way(self, w: int, new: Detection) -> Detection:
        """The waiting detection ``w`` (its place) gives way to ``new``, at the same
        sensor; it is tried. Returns it."""
        old, self.waiting[w] = self.waiting[w], new
        self.wait_t[w] = new.t_ns
        self.tried[old.key] = old
        self.view = None
        return old

    def take_waiting(self) -> list[Detection]:
        """The waiting detections, which no longer wait."""
        out, self.waiting, self.wait_s, self.wait_t = self.waiting, [], [], []
        self.view = None
        return out

    def close(self) -> None:
        """It closes: only its position and time are asked for from now on."""
        self.arrivals = self.hearing = self.view = None
        self.tried = {}


@dataclass
class AssocStats:
    fed: int = 0
    duplicates: int = 0
    unknown_sensor: int = 0
    unassociated: int = 0
    unsynchronised: int = 0
    budget_exhausted: int = 0       # steps that ran out of time before searching every seed
    events: int = 0
    updates: int = 0
    attached: int = 0
    searches: int = 0
    echoes: int = 0
    chance: int = 0                 # candidates that chance alignments explain as well
    silent_neighbours: int = 0
    explained: int = 0              # seeds not searched: an open shot's arrival (or its echo)
    attach_left_out: int = 0        # open events with matches left out of an attach step as unchanged
    attach_again: int = 0           # attach choices made again: an event left out as unchanged
                                    # matched a detection another took (it is asked too)


STEP_PARTS = ("search kernel", "fits", "search checks", "attach", "housekeeping")
"""The parts of an association step whose compute time :attr:`Associator.time_s` adds
up: the search kernel (:func:`kernels.search_seeds`, and the grid search where no
triple forms); the robust fits (every one: a search's candidate, an event's re-solve,
the 3-D tries, and what the fit learns of the wind and the speed of sound); the rest of
the search (the per-seed checks, the bookkeeping of the searches done ahead, making the
events); the rest of the attach step (matching pending detections to open events'
predicted arrivals, merging); and housekeeping (sorting the pending detections,
counting new ones into remembered seeds, expiring)."""


def _sorted_median(v: list[float]) -> float:
    """The median of a sorted list (as :func:`~shotnet.locator.locate._median`)."""
    n = len(v)
    return float(v[n // 2]) if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _where(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` of a 1-D array, without its ``ravel`` and wrapper (a fifth of
    its cost; the association asks thousands of times a night)."""
    return mask.nonzero()[0]


def _offsets(lengths: list[int]) -> np.ndarray:
    """CSR offsets (int64, ``len(lengths) + 1``) of consecutive runs of these lengths.
    (A running sum in Python: a step asks for a dozen of a few dozen runs each, where
    ``np.cumsum``'s call cost twice as much.)"""
    return np.fromiter(itertools.accumulate(lengths, initial=0), dtype=np.int64, count=len(lengths) + 1)


def _event_id(keys: list[str]) -> str:
    return hashlib.sha256("|".join(keys).encode()).hexdigest()[:20]


_GUN_P = 0.5       # a detection the node rates at least this likely a gunshot is gunshot-rated
_NO_INDEX = np.zeros(0, dtype=np.int64)      # (no candidate: an empty index array)
_NO_MEMO = (0, 0, None, 0)      # (a seed never remembered: not before 0, no wake-up, counts nothing)


def _gun(d: Detection) -> bool:
    """Whether the node rated the detection likelier a gunshot than not."""
    return d.p_gunshot >= _GUN_P


_T = operator.attrgetter("t_ns")
_KEY = operator.attrgetter("key")


class _PendingArrays:
    """The pending detections' times (ns), sensor indices, stated sigmas (ns) and the
    nodes' gunshot probabilities as arrays, and where each key is, kept beside the
    pending list (:meth:`get`) as it grows, is re-sorted at its tail, filtered and
    merged into: on a crowded night ten thousand detections are pending, and building
    these anew for every pass of every step was most of a step's time."""

    _DTYPES = (np.int64, np.int64, np.int64, np.float64, np.int64, np.int64, np.bool_, np.int64, np.bool_)

    def __init__(self, idx: dict[str, int], memo: dict[str, list]):
        self.idx = idx
        self.memo = memo
        self.of: list | None = None     # the list these describe (its first n)
        self.n = 0
        self._set(np.zeros(0, dtype=t) for t in self._DTYPES)

    def _set(self, arrays) -> None:
        # uid: each detection object's id(), to find it again (find); not_before, counting
        # and wake: its seed memo's "not before" clock (ns; 0 without one), whether it
        # still counts new detections (needs more before it is searched again), and its
        # wake-up clock (ns; -1: none); kept by Associator._set_memo and _count_new. fresh:
        # pending since the last attach step (Associator._attach_pending clears it).
        self.t, self.s, self.sig, self.pg, self.uid, self.not_before, self.counting, self.wake, self.fresh = arrays

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.t, self.s, self.sig, self.pg, self.uid, self.not_before, self.counting, self.wake, self.fresh

    def _columns(self, dets: list[Detection]) -> tuple[np.ndarray, ...]:
        """The arrays' values for ``dets``, as arrays (the integer ones gathered in one pass)."""
        memo, idx = self.memo, self.idx
        ints = np.array([(d.t_ns, idx[d.sensor_id], d.t_sigma_ns, id(d), m[1], m[3] > 0, -1 if m[2] is None else m[2])
                         for d, m in zip(dets, map(memo.get, map(_KEY, dets), itertools.repeat(_NO_MEMO)))],
                        dtype=np.int64).reshape(-1, 7)
        return ints[:, 0], ints[:, 1], ints[:, 2], np.array([d.p_gunshot for d in dets], dtype=np.float64), \
            ints[:, 3], ints[:, 4], ints[:, 5].astype(np.bool_), ints[:, 6], np.ones(len(dets), dtype=np.bool_)

    def get(self, pending: list[Detection]) -> "_PendingArrays":
        """The arrays for ``pending`` (extended if it only grew since)."""
        if self.of is not pending or self.n > len(pending):
            self.of, self.n = pending, 0
            self._set(np.zeros(0, dtype=t) for t in self._DTYPES)
        if self.n < len(pending):
            self._set(np.concatenate([a, v]) for a, v in zip(self._arrays(), self._columns(pending[self.n:])))
            self.n = len(pending)
        return self

    def find(self, dets: list[Detection]) -> np.ndarray:
        """Where each of ``dets`` is in the pending list (sorted by time, as after a
        step's :meth:`Associator._sort_pending`), or -1: found by its time, and told
        apart from others at that time by the object's ``id()`` (every caller holds
        ``dets``, so no id is reused meanwhile). A key index rebuilt whenever the
        pending list changed cost a crowded city's step 7%."""
        n = self.n
        if n == 0 or not dets:
            return np.full(len(dets), -1, dtype=np.int64)
        t = np.fromiter((d.t_ns for d in dets), dtype=np.int64, count=len(dets))
        u = np.fromiter(map(id, dets), dtype=np.int64, count=len(dets))
        i = self.t[:n].searchsorted(t)
        j = np.minimum(i, n - 1)
        hit = (i < n) & (self.uid[j] == u)
        out = np.where(hit, i, -1)
        for q in _where(~hit & (i < n) & (self.t[j] == t)).tolist():
            k = int(i[q]) + 1                   # others at the same time come first
            while k < n and self.t[k] == t[q]:
                if self.uid[k] == u[q]:
                    out[q] = k
                    break
                k += 1
        return out

    def truncate(self, pending: list[Detection], n: int) -> None:
        """``pending`` changed from index ``n`` on (its tail re-sorted in place)."""
        if self.of is pending and self.n > n:
            self._set(a[:n] for a in self._arrays())
            self.n = n

    def _replaced(self, old: list[Detection], new: list[Detection], change) -> list[Detection]:
        """``new`` replaces ``old``: ``change(array, index)`` makes each array's (if these
        described all of ``old``; else they are built again when asked for)."""
        if self.of is old and self.n == len(old):
            self._set(change(a, k) for k, a in enumerate(self._arrays()))
            self.n = len(new)
        else:
            self.n = 0
            self._set(np.zeros(0, dtype=t) for t in self._DTYPES)
        self.of = new
        return new

    def filtered(self, old: list[Detection], keep: np.ndarray) -> list[Detection]:
        """The detections of ``old`` that ``keep`` (bool, per detection) marks, in order,
        as a new list these arrays now describe."""
        ix = _where(keep)               # (once, not a boolean mask's count for each of nine arrays)
        return self._replaced(old, list(itertools.compress(old, keep.tolist())), lambda a, k: a.take(ix))

    def merged(self, old: list[Detection], more: list[Detection]) -> list[Detection]:
        """``sorted(old + more)`` by time (stable: ``old``'s first among equal times) as
        a new list these arrays now describe; ``old`` is sorted."""
        more = sorted(more, key=_T)
        at = [bisect.bisect_right(old, d.t_ns, key=_T) for d in more]
        new = list(old)
        for i, d in zip(reversed(at), reversed(more)):
            new.insert(i, d)
        cols = self._columns(more)
        # (np.insert's placement, worked out once for all six arrays: the q-th of
        # ``more`` lands at at[q] + q.)
        put = np.array(at, dtype=np.int64) + np.arange(len(at))
        rest = np.ones(len(new), dtype=np.bool_)
        rest[put] = False
        rest = _where(rest)

        def change(a: np.ndarray, k: int) -> np.ndarray:
            out = np.empty(len(new), dtype=a.dtype)
            out[rest] = a
            out[put] = cols[k]
            return out
        return self._replaced(old, new, change)


class _Counting:
    """The seed memo entries still counting new detections (:meth:`Associator._forget_stale_seeds`),
    by seed key, with what the count needs as arrays: the seeds' times (ns) and sensor
    indices, and for a candidate waiting to mature its source (m, m, emission ns).
    Rows are appended and marked dead, and compacted when the arrays fill: a crowded
    night keeps hundreds remembered, and gathering them from the memo lists every
    step was a tenth of the step."""

    def __init__(self):
        self.row: dict[str, int] = {}
        self.keys: list[str | None] = []
        self.memo: list[list | None] = []
        self.n = 0
        self._alloc(64)

    def _alloc(self, cap: int) -> None:
        self.t, self.s, self.t0 = (np.zeros(cap, dtype=np.int64) for _ in range(3))
        self.x, self.y = np.zeros(cap), np.zeros(cap)
        self.src, self.alive = np.zeros(cap, dtype=np.bool_), np.zeros(cap, dtype=np.bool_)

    def __len__(self) -> int:
        return len(self.row)

    def __iter__(self):
        return iter(list(self.row))

    def __setitem__(self, key: str, m: list) -> None:
        self.pop(key)
        if self.n == len(self.t):
            self._make_room()
        k = self.n
        self.n += 1
        self.row[key] = k
        self.keys.append(key)
        self.memo.append(m)
        self.t[k], self.s[k], self.alive[k] = m[0], m[4], True
        self.src[k] = len(m) > 5
        if self.src[k]:
            self.x[k], self.y[k], self.t0[k] = m[5], m[6], m[7]

    def pop(self, key: str, default=None):
        k = self.row.pop(key, None)
        if k is None:
            return default
        self.alive[k] = False
        self.keys[k] = None
        m, self.memo[k] = self.memo[k], None
        return m

    __delitem__ = pop       # (a key not counting is no error: it is not counting either way)

    def _make_room(self) -> None:
        live = _where(self.alive[:self.n])
        old = (self.t, self.s, self.t0, self.x, self.y, self.src)
        if len(live) > self.n // 2:
            self._alloc(2 * len(self.t))
        for a, b in zip((self.t, self.s, self.t0, self.x, self.y, self.src), old):
            a[:len(live)] = b[live]
        self.alive[:] = False
        self.alive[:len(live)] = True
        self.keys = [self.keys[k] for k in live.tolist()]
        self.memo = [self.memo[k] for k in live.tolist()]
        self.row = {key: k for k, key in enumerate(self.keys)}
        self.n = len(live)

    def live(self, src: bool) -> np.ndarray:
        """The live rows (indices) of candidates waiting to mature (``src``), or of the
        other seeds."""
        n = self.n
        return _where(self.alive[:n] & (self.src[:n] == src))


class _Batch:
    """The pending detections, as arrays, for searching many seeds at once: a snapshot
    at the start of a search, whose detections the shots found meanwhile take
    (:meth:`take`; a search never adds any)."""

    def __init__(self, a: "Associator", pend: list[Detection]):
        self.a = a
        self.pend = pend
        self.arr = a._parr.get(pend)
        self.tp, self.sp = self.arr.t, self.arr.s
        self.alive = np.ones(len(pend), dtype=np.bool_)
        self._sig: np.ndarray | None = None
        self._gun: np.ndarray | None = None
        self._by: tuple | None = None     # the detections grouped by sensor (kernels.by_sensor)

    def take(self, dets: list[Detection]) -> list[int]:
        """These are no longer pending. Returns the indices of those that were."""
        if not dets:
            return []
        idx = self.arr.find(dets)
        idx = idx[idx >= 0]
        idx = idx[self.alive[idx]].tolist()
        self.alive[idx] = False
        return idx

    def touched(self, taken: list[int], seeds: list[int]) -> np.ndarray:
        """Which of the searches of ``seeds`` (indices) had any of the detections ``taken``
        (indices) in their windows (bool, per seed): at another sensor than the seed's,
        at or after its time and within the pair gate (the window of
        :func:`kernels.seed_window_by_sensor`, which a crowded night's cap fills from the
        nearest sensors: one taken anywhere in it may let a farther sensor in)."""
        taken_a = np.array(taken, dtype=np.int64)
        taken_a = taken_a[self.tp[taken_a].argsort(kind="stable")]
        seeds_a = np.array(seeds, dtype=np.int64)
        n = np.zeros(len(seeds_a), dtype=np.int64)
        kernels.new_in_windows(self.tp[seeds_a], self.sp[seeds_a], self.tp[taken_a], self.sp[taken_a],
                               self.a._pair_ns, self.a.shot_span_ns, n)
        return n > 0

    def run(self, seeds: list[int]) -> dict[str, tuple]:
        """Search ``seeds`` (indices of pending detections; :func:`kernels.search_seeds`,
        the grid search where no triple could be formed). Returns per seed key:
        ``(status, count, x m, y m, emission offset s, chance pre-test, the same with
        five detections free (0.0 for a candidate too small for the fit to estimate the
        wind), the candidate's detections (pending indices), the index of the open event
        the candidate's source is near (:meth:`Associator._near_event`; -1: none) and the
        generation of the open events' table it was found at (-1: not looked for), the
        seed's index)``."""
        if not seeds:
            return {}
        a, cfg = self.a, self.a.cfg
        if self._sig is None:
            self._sig = a._sigma_of(self.arr.sig)
            self._gun = self.arr.pg >= _GUN_P
        sig_p, gun_p = self._sig, self._gun
        n, n_sens = len(seeds), len(a.layout)
        ks = np.array(seeds, dtype=np.int64)
        hist = a._flat_history() + (a._seen_from, a._seen_to)
        status = np.zeros(n, dtype=np.int64)
        count = np.zeros(n, dtype=np.int64)
        x, y, tau0, prob, prob5 = np.zeros(n), np.zeros(n), np.zeros(n), np.ones(n), np.zeros(n)
        cand = np.zeros((n, n_sens), dtype=np.int64)
        if self._by is None:
            self._by = kernels.by_sensor(self.sp, n_sens)
        t0 = time.perf_counter()
        kernels.search_seeds(ks, self.tp, self.sp, *self._by, self.alive, sig_p, gun_p, a.shot_span_ns, a._pair_ns,
                             int(cfg.max_search), a._spx, a._spy, a._spz, float(a.z_src), float(a.c),
                             float(a.wind[0]), float(a.wind[1]),
                             a._hyp_window_s(), float(cfg.seed_region_m), *a._box, a._nbr_order,
                             int(cfg.hyp_neighbours), int(cfg.hyp_per_sensor), int(cfg.hyp_near), int(cfg.hyp_full),
                             int(cfg.hyp_full_sensors),
                             a._d_min, float(cfg.coarse_cell_m), float(cfg.gate_s), *hist, int(cfg.min_sensors),
                             a._n_wind, status, count, x, y, tau0, prob, prob5, cand)
        a._kernel_s += time.perf_counter() - t0
        # Each candidate's open event nearby (Associator._near_event), at this state of
        # the open events' table (its generation; asked again if it changed by then).
        near = np.full(n, -1, dtype=np.int64)
        is_c = status == kernels.SEED_CANDIDATE
        gen = a._open_tab.gen
        if a.open and is_c.any():
            c = _where(is_c)
            t0s = self.tp[ks[c]] + (tau0[c] * NS_PER_S).astype(np.int64)
            got_near = np.empty(len(c), dtype=np.int64)
            kernels.event_near_many(*a._open_table()[:4], t0s, x[c], y[c], a.cfg.same_shot_s * NS_PER_S,
                                    a.cfg.same_shot_m + a.cfg.coarse_cell_m, got_near)
            near[c] = got_near
        out = {}
        pend, no_triple, candidate = self.pend, kernels.SEED_NO_TRIPLE, kernels.SEED_CANDIDATE
        for q, (k, st, n, xq, yq, tq, pq, p5q, nq) in enumerate(zip(seeds, status.tolist(), count.tolist(), x.tolist(),
                                                                    y.tolist(), tau0.tolist(), prob.tolist(),
                                                                    prob5.tolist(), near.tolist())):
            if st == no_triple:
                t0 = time.perf_counter()
                out[pend[k].key] = self._grid(k, hist) + (k,)
                a._kernel_s += time.perf_counter() - t0
            else:
                # (The candidate a view of this chunk's array: only ever read.)
                out[pend[k].key] = (st, n, xq, yq, tq, pq, p5q, cand[q, :n] if st == candidate else _NO_INDEX, nq,
                                    gen, k)
        return out

    def _grid(self, k: int, hist: tuple) -> tuple:
        """Where no triple could be formed: the anchored grid search decides."""
        a, cfg = self.a, self.a.cfg
        s0 = int(self.sp[k])
        js, t, offsets, _ = kernels.seed_window_by_sensor(self.tp, self.alive, k, s0, *self._by, a._pair_ns[s0],
                                                          int(cfg.max_search), len(a.layout), a._nbr_order[s0])
        found = a._grid_search(s0, t, offsets)
        if isinstance(found, int):
            return kernels.SEED_WEAK, found, 0.0, 0.0, 0.0, 1.0, 0.0, _NO_INDEX, -1, -1
        x0, y0, w = found
        buf = np.zeros(len(a.layout), dtype=np.int64)
        n, tau0, prob, prob5 = kernels.candidate_at(x0, y0, float(a.z_src), k, self.tp, self.sp, self._sig, self._gun,
                                                    js, t, offsets, a._spx, a._spy, a._spz, float(a.c),
                                                    float(a.wind[0]), float(a.wind[1]), float(w + cfg.gate_s), *hist,
                                                    int(cfg.min_sensors), a._n_wind, buf)
        return kernels.SEED_CANDIDATE, int(n), x0, y0, float(tau0), float(prob), float(prob5), buf[:n].copy(), -1, -1


class _EventTable:
    """The emission times (ns), positions (m), ellipses' major semi-axes (m) and detection
    counts of a list of events, as arrays for the kernels (:func:`kernels.event_near`,
    :func:`kernels.louder_before`), kept row by row: a new event appends its row, a new
    version rewrites its own, and only events leaving the list rebuild it (a thousand
    open events in a crowded city, and every search asks)."""

    def __init__(self):
        self.valid = False
        self.gen = 0        # counts the changes (what was computed from the table is stale)

    def invalidate(self) -> None:
        self.valid = False
        self.gen += 1

    def rows(self, ops: list[_Open]) -> tuple[np.ndarray, ...]:
        if not self.valid:
            pad = max(64, len(ops))
            self.t0, self.cnt = (np.concatenate([np.array(v, dtype=np.int64), np.empty(pad, dtype=np.int64)])
                                 for v in ([op.t0_ns for op in ops], [len(op.dets) for op in ops]))
            self.x, self.y, self.major = (np.concatenate([np.array(v, dtype=np.float64), np.empty(pad)]) for v in (
                [op.sol.x_m for op in ops], [op.sol.y_m for op in ops], [op.event.ellipse95_m.major for op in ops]))
            self.row: dict[int, int] = {id(op): k for k, op in enumerate(ops)}
            self.n = len(ops)
            self.valid = True
        n = self.n
        return self.t0[:n], self.x[:n], self.y[:n], self.major[:n], self.cnt[:n]

    def append(self, op: _Open) -> None:
        self.gen += 1
        if not self.valid:
            return
        if self.n == len(self.t0):
            cap = 2 * self.n
            self.t0, self.x, self.y, self.major, self.cnt = (
                np.concatenate([a, np.empty(cap - self.n, dtype=a.dtype)])
                for a in (self.t0, self.x, self.y, self.major, self.cnt))
        self.row[id(op)] = self.n
        self.n += 1
        self.changed(op)

    def keep(self, kept: np.ndarray, ops: list[_Open]) -> None:
        """Only the rows ``kept`` (bool, by row) stay, in order: the list is now ``ops``."""
        self.gen += 1
        if not self.valid:
            return
        idx = _where(kept[:self.n])
        m = len(idx)
        for a in (self.t0, self.x, self.y, self.major, self.cnt):
            a[:m] = a[idx]
        self.row = {id(op): k for k, op in enumerate(ops)}
        self.n = m

    def changed(self, op: _Open) -> None:
        """``op`` (if in the list) has a new version."""
        self.gen += 1
        k = self.row.get(id(op)) if self.valid else None
        if k is not None:
            self.t0[k], self.x[k], self.y[k] = op.t0_ns, op.sol.x_m, op.sol.y_m
            self.major[k], self.cnt[k] = op.event.ellipse95_m.major, len(op.dets)


class Associator:
    """Detections in, events out. Pure logic: no sockets, no threads, no wall clock."""

    # The attach step leaves out the open events unchanged since the last step
    # (_attach_pending); False asks every matched event each step (the tests compare).
    _leave_unchanged = True

    def __init__(self, layout: SensorLayout, cfg: AssocConfig = AssocConfig()):
        self.layout = layout
        self.cfg = cfg
        # The speed of sound: from the configured temperature, with that temperature's
        # error, until well-heard shots have measured it (_learn_c).
        self.c = speed_of_sound_m_per_s(cfg.temperature_c)
        self.c_sd = self._c_prior_sd = 0.5 * (speed_of_sound_m_per_s(cfg.temperature_c + cfg.temperature_sigma_c) -
                                              speed_of_sound_m_per_s(cfg.temperature_c - cfg.temperature_sigma_c))
        # Measurements of the speed of sound: the shots' times (ns), c (m/s), its sd (m/s).
        self._cs = (collections.deque(), collections.deque(), collections.deque())
        self._cs_sorted: tuple[list[float], list[float]] = ([], [])
        self.z_src = layout.ground_enu_up_m + cfg.source_height_m
        self.idx = layout.index()
        self.wind = np.asarray(cfg.wind_m_per_s, dtype=np.float64).copy()
        self.wind_known = cfg.wind_known
        self._winds: collections.deque = collections.deque(maxlen=cfg.wind_history)
        self._winds_sorted: tuple[list[float], list[float]] = ([], [])
        self.pos = layout.enu_m
        self.pending: list[Detection] = []      # sorted by time at the end of each step
        self._memo: dict[str, list] = {}         # (the seed memo, below)
        self._parr = _PendingArrays(self.idx, self._memo)    # ...and as arrays
        self._n_sorted = 0                       # its first this many are sorted (then appended)
        self.history: dict[str, list[int]] = {}  # recent detection times per sensor, sorted
        self.gun_history: dict[str, list[int]] = {}  # ...of those the node rated gunshots
        self._flat = None                        # both as (times, offsets by sensor index) x 2...
        self._flat_add: list[tuple[int, int, bool]] = []   # ...and what they still lack (sensor, ns, gunshot)
        self._hist_oldest = NOW_INFINITE         # the earliest time in the histories (ns)
        self._sids = sorted(self.idx, key=self.idx.get)
        self._snr: dict[tuple[str, int], float] = {}  # their onset SNRs (dB), where known
        self._seen_from, self._seen_to = NOW_INFINITE, -NOW_INFINITE  # times the histories cover
        self._now = 0                            # the clock at the last step
        self._fed_at: dict[str, int] = {}        # detection key -> clock when it arrived
        # Seed memo: key -> [seed time ns, not before this clock, wake at this clock (or
        # None), new detections still needed to wake, its sensor's index] (+ [x m, y m,
        # emission time ns] of the source of a candidate waiting to mature). A seed is
        # searched again once the clock passes "not before" and it is woken by time or by
        # new detections: in its window (at another sensor, no later than the pair gate
        # to it), or for a candidate waiting to mature, where its source predicts. Also
        # each seed's last failed candidate, never solved twice.
        self._counting = _Counting()             # the memo entries still counting new detections
        self._failed: dict[str, tuple[Detection, ...]] = {}
        self._new_times: list[int] = []         # times (ns) and sensor indices of detections fed since
        self._new_sensors: list[int] = []       # the last count (_forget_stale_seeds)
        self._rate_cache: dict[int, np.ndarray] = {}  # second -> per-sensor rates, this step
        self._taken: list[Detection] | None = None     # detections shots took, during a search
        self._behind = False                     # the last step's search ran out of time
        # How far behind the search is (s): at the last step, how long past its first
        # planned search (its time plus _first_search_ns) the oldest seed not yet
        # searched was; 0 when every ripe seed was searched. The pending list is no
        # measure of that: it holds, by design, every detection no shot has taken until
        # sound has crossed the array (seconds of the stream).
        self.search_lag_s = 0.0
        self.search_chunk = 16                   # seeds searched together (in parallel)
        self.seen: set[str] = set()             # keys fed (for dedup_window_s)...
        self._seen_order: collections.deque = collections.deque()   # ...as (time ns, key), in feed order
        self.open: list[_Open] = []
        self._open_tab = _EventTable()           # the open events' (_open_table)
        self._arr_tab: dict | None = None        # the open events' predicted arrivals (_open_arrivals)...
        self._arr_stale: list[_Open] = []        # ...and the events with new versions since
        self._recent_tab = _EventTable()         # ...and the recent ones'
        self.recent: list[_Open] = []     # closed events, for incidents and late attachments
        self.stats = AssocStats()
        # Compute time (s) of the steps so far, by part (STEP_PARTS; no part counted twice).
        self.time_s: dict[str, float] = dict.fromkeys(STEP_PARTS, 0.0)
        self._fit_s = self._kernel_s = 0.0        # running totals, inside the steps' parts
        lo = self.pos[:, :2].min(axis=0) - cfg.margin_m
        hi = self.pos[:, :2].max(axis=0) + cfg.margin_m
        gx = np.arange(lo[0], hi[0] + cfg.coarse_cell_m, cfg.coarse_cell_m)
        gy = np.arange(lo[1], hi[1] + cfg.coarse_cell_m, cfg.coarse_cell_m)
        mx, my = np.meshgrid(gx, gy, indexing="ij")
        cgx, cgy = mx.ravel(), my.ravel()
        # The nearest sensor's distance per coarse node (a k-d tree: a dense nodes x
        # sensors matrix would take gigabytes for a city of a thousand sensors).
        nodes = np.column_stack([cgx, cgy])
        d_min = cKDTree(self.pos[:, :2]).query(nodes)[0]
        self._d_min = np.ascontiguousarray(d_min.reshape(len(gx), len(gy)))   # nearest sensor (m) per node
        self._nodes = (cgx, cgy, d_min)
        self._node_axes = (gx, gy)               # (node k is (gx[k // len(gy)], gy[k % len(gy)]))
        self._regions: dict[int, tuple[np.ndarray, np.ndarray]] = {}      # (_region)
        self._tried_prune_at = 64                # (_choose_attached)
        self._spx, self._spy, self._spz = (np.ascontiguousarray(self.pos[:, k]) for k in range(3))
        diag = float(np.linalg.norm(hi - lo))
        # Windows that must hold every arrival of a shot are sized for the slowest sound
        # the configured temperature allows (3 sigma colder).
        c_slow = self.c - 3.0 * self._c_prior_sd
        self.max_travel_s = diag / c_slow
        # Longest time between two detections of one shot: across the sensors, plus wind;
        # and per sensor pair (the pair gate).
        pair_m = np.linalg.norm(self.pos[:, None, :2] - self.pos[None, :, :2], axis=2)
        slack_s = cfg.gate_s + 2 * cfg.window_tol_s
        self._pair_ns = ((pair_m / c_slow * (1 + cfg.max_wind_m_per_s / c_slow) + slack_s) * NS_PER_S).astype(np.int64)
        self.shot_span_ns = int(self._pair_ns.max())
        # Each sensor's others, nearest first.
        # (Not simply argsort's [1:]: two sensors at one place would tie with the sensor
        # itself, and its row would then hold it and miss the other.)
        order = np.argsort(pair_m, axis=1, kind="stable")
        self._nbr_order = np.ascontiguousarray(np.array([row[row != k] for k, row in enumerate(order)],
                                                        dtype=np.int64).reshape(len(layout), len(layout) - 1))
        self._box = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
        # A candidate this large is fitted with the wind as two more unknowns (its chance
        # pre-test then frees five detections, not three); 0: never.
        self._n_wind = int(cfg.wind_min_sensors) if cfg.estimate_wind else 0
        # A seed is first searched once sound from anywhere in its region has had time to
        # reach min_sensors - 1 other sensors (those nearest the seed's sensor, whose pair
        # windows close first) and their detections to arrive: earlier, a real shot
        # cannot yet have enough sensors, and on a crowded night each premature search
        # only finds chance alignments.
        self._first_search_ns = (np.sort(self._pair_ns, axis=1)[:, min(cfg.min_sensors - 1, len(layout) - 1)]
                                 + int(cfg.latency_slack_s * NS_PER_S))
        self.incidents = IncidentTracker()

    # ------------------------------------------------------------------ input
    def feed(self, det: Detection) -> bool:
        """Add a detection. Returns False (and counts it) for duplicates and unknown sensors."""
        if det.sensor_id not in self.idx:
            self.stats.unknown_sensor += 1
            return False
        if det.key in self.seen:
            self.stats.duplicates += 1
            return False
        if det.clock_sigma_ns > self.cfg.max_clock_sigma_ms * 1e6:
            self.stats.unsynchronised += 1
            return False
        det = self._corrected(det)
        self._see(det)
        self.stats.fed += 1
        self.pending.append(det)
        self._new_times.append(det.t_ns)
        self._new_sensors.append(self.idx[det.sensor_id])
        self._fed_at[det.key] = self._now
        self._heard(det)
        return True

    def _see(self, det: Detection) -> None:
        self.seen.add(det.key)
        self._seen_order.append((det.t_ns, det.key))

    def _heard(self, det: Detection) -> None:
        """Record that ``det``'s sensor heard something at its time (sensor histories for
        the silent-neighbour check and the chance test)."""
        bisect.insort(self.history.setdefault(det.sensor_id, []), det.t_ns)
        self._hist_oldest = min(self._hist_oldest, det.t_ns)
        gun = _gun(det)
        if gun:
            bisect.insort(self.gun_history.setdefault(det.sensor_id, []), det.t_ns)
        if self._flat is not None:
            self._flat_add.append((self.idx[det.sensor_id], det.t_ns, gun))
        self._seen_from = min(self._seen_from, det.t_ns)
        self._seen_to = max(self._seen_to, det.t_ns)
        if det.snr_db is not None:
            self._snr[(det.sensor_id, det.t_ns)] = det.snr_db

    def _corrected(self, det: Detection) -> Detection:
        """Apply the sensor's clock offset measured by the survey (shotnet calibrate survey)."""
        if self.layout.clock_offset_ns is not None:
            off = int(self.layout.clock_offset_ns[self.idx[det.sensor_id]])
            if off:
                # A copy at the corrected time (dataclasses.replace runs the frozen class's
                # __init__ over every field: a tenth of feeding a detection).
                new = copy.copy(det)
                object.__setattr__(new, "t_ns", det.t_ns - off)
                return new
        return det

    def restore(self, events: list[Event], dets: list[Detection]) -> None:
        """Resume after a restart: re-open stored events (so late detections attach to
        them under the same ids) and feed every stored detection they did not use."""
        by_key = {d.key: self._corrected(d) for d in dets if d.sensor_id in self.idx}
        used: set[str] = set()
        for ev in sorted(events, key=lambda e: e.t_ns):
            mine = [by_key[k] for k in ev.detections if k in by_key]
            if len(mine) < len(ev.detections):
                continue
            new, sol, t0_ns = self._solve(mine, (ev.x_m, ev.y_m), event_id=ev.event_id, version=ev.version,
                                          incident_id=ev.incident_id)
            if new is None:
                continue
            self.incidents.assign(ev.event_id, t0_ns, sol.x_m, sol.y_m)
            self.incidents.update(ev)
            close_at = t0_ns + int((self.max_travel_s + 2 * self.cfg.latency_slack_s) * NS_PER_S)
            self._add_open(_Open(ev, sol, mine, close_at, t0_ns))
            used.update(ev.detections)
            for d in mine:
                self._see(d)
                self._heard(d)
        for d in sorted(dets, key=lambda d: d.t_ns):
            if d.key not in used:
                self.feed(d)

    # ------------------------------------------------------------------ processing
    def step(self, now_ns: int = NOW_INFINITE, budget_s: float | None = None) -> list[Event]:
        """Process what has arrived; returns new events and updated versions.

        ``budget_s`` bounds the search's compute time (the live service passes one, so an
        overloaded night cannot stall the loop or a shutdown); seeds not reached are
        searched at the next step. Batch replays pass none."""
        out: list[Event] = []
        tick = time.perf_counter
        t0, f0, k0 = tick(), self._fit_s, self._kernel_s
        if now_ns != NOW_INFINITE:
            self._now = max(self._now, now_ns)
        self._sort_pending()
        self._rate_cache.clear()
        t1 = tick()
        out += self._attach_pending(now_ns)
        t2, f1 = tick(), self._fit_s
        self._forget_stale_seeds()
        t3 = tick()
        out += self._search(now_ns, None if budget_s is None else t3 + budget_s)
        t4, f2, k2 = tick(), self._fit_s, self._kernel_s
        self._expire(now_ns)
        self._n_sorted = len(self.pending)
        ts = self.time_s
        ts["fits"] += f2 - f0
        ts["search kernel"] += k2 - k0
        ts["attach"] += (t2 - t1) - (f1 - f0)
        ts["search checks"] += (t4 - t3) - (f2 - f1) - (k2 - k0)
        ts["housekeeping"] += (t1 - t0) + (t3 - t2) + (tick() - t4)
        return out

    def _sort_pending(self) -> None:
        """Sort the pending detections by time (stable), as ``list.sort`` would: those
        fed since the last step were appended to a sorted list, so only the part from
        the earliest of them on is sorted again."""
        n0, self._n_sorted = self._n_sorted, 0
        if len(self.pending) > n0:
            t_min = min(d.t_ns for d in itertools.islice(self.pending, n0, None))
            at = bisect.bisect_left(self.pending, t_min, hi=n0, key=_T)
            if at < len(self.pending) - 1:
                self.pending[at:] = sorted(self.pending[at:], key=_T)
                self._parr.truncate(self.pending, at)

    def _sigma(self, dets: list[Detection]) -> np.ndarray:
        """The detections' timing sigmas (s) for the fit: stated, model and survey errors."""
        return self._sigma_of(np.fromiter((d.t_sigma_ns for d in dets), dtype=np.int64, count=len(dets)))

    def _sigma_of(self, t_sigma_ns: np.ndarray) -> np.ndarray:
        s = t_sigma_ns.astype(np.float64) / NS_PER_S
        var_model, var_survey = self._sigma_added()
        return np.sqrt(s * s + var_model + var_survey)

    def _sigma_added(self) -> tuple[float, float]:
        """The variances (s^2) added to each detection's stated sigma: the model error's
        and the survey's (at the speed of sound)."""
        return self.cfg.model_sigma_s**2, (self.cfg.survey_sigma_m / self.c) ** 2

    def _attach_pending(self, now_ns: int) -> list[Event]:
        """Pending detections that arrive where an open event predicts join it (every
        open event's predicted arrival at each sensor against that sensor's pending
        detections: :func:`kernels.arrival_matches`). A joining
        detection waits with its event (no longer a seed) until the event has gained
        half as many again, or closes; then the event is re-solved once (a shot
        heard by fifty sensors would otherwise be re-solved fifty times)."""
        out = []
        if self.open and self.pending:
            arr = self._parr.get(self.pending)
            p_t, p_s = arr.t, arr.s
            pred, gate, _, _, _, dist, dorder = self._open_arrivals()       # (events, sensors)
            ev, idx, miss = kernels.arrival_matches(p_t, p_s, pred, gate, len(self.layout))
            n_open = len(self.open)
            bounds = ev.searchsorted(np.arange(n_open + 1))
            counts = bounds[1:] - bounds[:-1]
            # An event unchanged since the last step (the same version, waiting, tried and
            # hearing: its view kept) whose matches are the same (no pending detection new
            # since then among them, and as many: detections only leave) chose nothing
            # then (a join or give-way changes it), so it chooses nothing now: it is left
            # out, unless a detection it matches is taken by another event now (then it is
            # asked too, and the choice made again). On a fireworks night two dozen events
            # match something at each step and a few change.
            n_matched = counts.tolist()
            changed = np.fromiter([op.view is None or op.n_matched != c for op, c in zip(self.open, n_matched)],
                                  dtype=np.bool_, count=n_open)
            changed[ev[arr.fresh[idx]]] = True
            if not self._leave_unchanged:
                changed[:] = True
            for op, c in zip(self.open, n_matched):
                op.n_matched = c
            matched = _where(counts)
            released: list[Detection] = []
            while True:
                evs = matched[changed[matched]]
                if not len(evs):
                    break
                left = ~changed[ev]         # (the matches of those left out)
                held_i, released = self._choose_attached(evs, idx, miss, bounds, p_s, arr.uid, pred, gate, dist,
                                                         dorder, idx[left])
                if released is not None:
                    self.stats.attach_left_out += len(matched) - len(evs)
                    if held_i.any():
                        self.pending = self._parr.filtered(self.pending, ~held_i)
                    break
                # Those whose matches were taken are asked too (and so on), from the start.
                self.stats.attach_again += 1
                changed[ev[left & held_i[idx]]] = True
            self._parr.get(self.pending).fresh[:] = False
        else:
            released = []
        back: list[Detection] = list(released)
        n_recent = len(self.recent)
        open_ = self.open
        closing = [now_ns >= op.close_at_ns for op in open_]        # (by place in the open list)
        growth = self.cfg.update_growth
        # Events whose waiting detections are due (they close, or enough have joined),
        # and those closing. (Picked in one pass: a fireworks night keeps thirty open, and
        # visiting each every step was a tenth of the step.)
        for k in [k for k, op in enumerate(open_)
                  if closing[k] or (op.waiting and len(op.waiting) >= max(1, int(growth * len(op.dets))))]:
            op = open_[k]
            if op.waiting:
                joined = op.take_waiting()
                ev, n_kept = self._grow(op, joined, consume=False)
                kept = set(ev.detections) if ev is not None else set()
                if ev is not None:
                    self.stats.attached += n_kept
                    out.append(ev)
                # Tried with this event: those it did not keep are pending again (those it
                # kept are its own and never pending again).
                rejected = [d for d in joined if d.key not in kept]
                op.add_tried(rejected)
                back += rejected
            if closing[k]:
                # Only the open events' predictions are asked for (a closed event is found
                # by its position and time): a night's 120 s of closed events kept them.
                op.close()
        if any(closing):
            # (The closing ones go to the end of ``recent``, in order.)
            self.recent += itertools.compress(open_, closing)
            stays = np.logical_not(closing)
            self._open_closed(stays, list(itertools.compress(open_, stays.tolist())))
            for op in self.recent[n_recent:]:
                self._recent_tab.append(op)
        if back:                            # not kept: pending again (tried with that event)
            self.pending = self._parr.merged(self.pending, back)
        if now_ns != NOW_INFINITE and self.recent:
            kept = (now_ns - self._recent_table()[0]) < 120 * NS_PER_S
            if not kept.all():
                self.recent = list(itertools.compress(self.recent, kept.tolist()))
                self._recent_tab.keep(kept, self.recent)
        return out

    def _choose_attached(self, evs: np.ndarray, idx: np.ndarray, miss: np.ndarray, bounds: np.ndarray,
                         p_s: np.ndarray, p_uid: np.ndarray, pred: np.ndarray, gate: np.ndarray, dist: np.ndarray,
                         dorder: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, list[Detection] | None]:
        """Of the pending detections matching open events' predicted arrivals (the
        events ``evs``, indices in ``open``, in order, each with its pairs
        ``idx[bounds[e]:bounds[e + 1]]``, pending indices, ``miss`` ns from the
        prediction; ``p_s`` and ``p_uid`` the pending detections' sensors and objects'
        ids; ``pred`` and ``gate`` every open event's predicted arrivals and gates, -1 and
        0 at their own sensors, ``dist`` its distances, m, ``dorder`` its sensors in order
        of distance), those that join (:func:`kernels.attach_choose`):
        per sensor the one nearest the prediction, not yet tried with the event nor
        taken by an earlier one, within hearing range. Beyond hearing range every
        match is chance, and on a crowded night chance matches are common: a far shot
        would take detections that belong to a shot near them. So a match beyond the
        event's farthest own sensor joins only within the disc around the shot where
        its matched count (its own sensors, the waiting ones and these) is least likely
        by chance (:func:`kernels.significant_radius`, never inside its farthest own
        sensor; cached per event version and match). Joined detections wait with their
        event. A waiting detection gives way to a pending one nearer the prediction at its
        sensor (it joined as it came: an early one within the gate, another shot's
        arrival tens of ms before this one's, was held here, and the shot it belonged to
        took the next best); it is pending again, tried with this event. Returns which
        pending detections joined (bool, by pending index), and those that gave way; or,
        having applied none of it, which would have joined and None, if any of ``left``
        (pending indices: the matches of events left out as unchanged) was taken."""
        ops = [self.open[e] for e in evs.tolist()]
        lo, hi = bounds[evs], bounds[evs + 1]
        pred_ns, gate_ns, dist, dorder = pred[evs], gate[evs], dist[evs], dorder[evs]
        t0_ns = self._open_table()[0][evs]
        n_ev = len(ops)
        held_i = np.zeros(len(p_s), dtype=np.bool_)
        # Per event (CSR): the detections it has tried, by the objects' id() (as the
        # pending ones are known: p_uid; an event's tried dict holds them, so none is
        # reused meanwhile), those waiting with it (_Open.attach_view), and the radius
        # cached for its matches.
        tried_l, wait_sl, wait_tl, cached, cache_r, ok = zip(*[op.attach_view() for op in ops])
        tried_off = _offsets(list(map(len, tried_l)))
        if tried_off[-1] > self._tried_prune_at:
            self._prune_tried(ops)
            tried_l, wait_sl, wait_tl, cached, cache_r, ok = zip(*[op.attach_view() for op in ops])
            tried_off = _offsets(list(map(len, tried_l)))
            self._tried_prune_at = 2 * int(tried_off[-1]) + 64
        tried_u = np.concatenate(tried_l)
        wait_off = _offsets(list(map(len, wait_sl)))
        wait_s, wait_t = np.concatenate(wait_sl), np.concatenate(wait_tl)
        cache_ok = np.array(ok, dtype=np.bool_)
        cache_off = _offsets(list(map(len, cached)))
        cache_mine = np.concatenate(cached)
        cache_r = np.array(cache_r, dtype=np.float64)
        released: list[Detection] = []
        swaps: list[int] = []
        if len(wait_s):
            # The waiting detections' sensors and distances (ns) from the predictions.
            wait_j = np.arange(n_ev).repeat(wait_off[1:] - wait_off[:-1])
            wait_m = np.abs(wait_t - pred_ns[wait_j, wait_s])
            swap = kernels.give_way(idx, miss, lo, hi, p_s, p_uid, held_i, tried_off, tried_u, wait_off, wait_s, wait_m,
                                    len(self.layout))
            swaps = _where(swap >= 0).tolist()
        # The sensors' rates around each shot (as _rates: per second of its emission time),
        # and for the chance of a match by chance its own sensors at the plain gate
        # (_gate_s with no prediction error: the kernel adds the medium's term), where
        # the kernel works out a radius.
        t_all, off_all = self._flat_history()[:2]
        join, join_off, mine, mine_off, radius, computed = kernels.attach_choose(
            idx, miss, lo, hi, p_s, p_uid, held_i, wait_off, wait_s, tried_off, tried_u, pred_ns, dist, dorder,
            gate_ns, t_all, off_all, t0_ns // NS_PER_S,
            self._seen_from, self._seen_to, float(self.cfg.gate_s), float(self._medium_err()), self.c**2,
            int(self.cfg.min_sensors), cache_ok, cache_off, cache_mine, cache_r)
        if len(left) and held_i[left].any():
            return held_i, None
        for w in swaps:
            j = int(wait_j[w])          # (at the same sensor)
            released.append(ops[j].give_way(w - int(wait_off[j]), self.pending[swap[w]]))
        for j in _where(computed).tolist():
            ops[j].heard(mine[mine_off[j]:mine_off[j + 1]], float(radius[j]))
        p_t = self._parr.get(self.pending).t
        for j in _where(join_off[1:] - join_off[:-1]).tolist():
            joined = join[join_off[j]:join_off[j + 1]]
            ops[j].join([self.pending[i] for i in joined.tolist()], p_s[joined].tolist(), p_t[joined].tolist())
        return held_i, released

    def _prune_tried(self, ops: list[_Open]) -> None:
        """Tried detections neither pending nor waiting with an open event never will be
        again (an event took them, or they expired): the events' tried lists (``ops``)
        drop them. (Only to keep the lists short: such a one matches nothing, so how
        often this runs changes no choice.)"""
        tried_d = [d for op in ops for d in op.tried.values()]
        gone = _where(self._parr.get(self.pending).find(tried_d) < 0).tolist()
        if gone:
            owner = np.repeat(np.arange(len(ops)), [len(op.tried) for op in ops]).tolist()
            waiting = {id(d) for op in self.open for d in op.waiting}
            for q in gone:
                if id(tried_d[q]) not in waiting:
                    ops[owner[q]].forget_tried(tried_d[q].key)

    def _forget_stale_seeds(self) -> None:
        """Count the new detections into the seeds still waiting for some (once none are
        needed, more change nothing): those in a seed's window, or for a candidate waiting
        to mature, those where its source predicts (others may make another source best,
        but they are seeds themselves; the candidate is searched again when it matures)."""
        if self._new_times and self._counting:
            new_t = np.array(self._new_times, dtype=np.int64)
            order = new_t.argsort(kind="stable")
            new_s = np.array(self._new_sensors, dtype=np.int64)[order]
            new_t = new_t[order]
            cnt = self._counting
            # A candidate waiting to mature counts the arrivals its source predicts; any
            # other seed, the detections landing in its window.
            at_src, in_win = cnt.live(True), cnt.live(False)
            if len(at_src):
                n_new = np.zeros(len(at_src), dtype=np.int64)
                kernels.new_at_sources(cnt.x[at_src], cnt.y[at_src], cnt.t0[at_src], new_t, new_s, self._spx,
                                       self._spy, self._spz, float(self.z_src), float(self.c), float(self.wind[0]),
                                       float(self.wind[1]), int((self._hyp_window_s() + self.cfg.gate_s) * NS_PER_S),
                                       n_new)
                self._count_new(at_src, n_new)
            if len(in_win):
                n_new = np.zeros(len(in_win), dtype=np.int64)
                kernels.new_in_windows(cnt.t[in_win], cnt.s[in_win], new_t, new_s, self._pair_ns, self.shot_span_ns,
                                       n_new)
                self._count_new(in_win, n_new)
        self._new_times.clear()
        self._new_sensors.clear()

    def _count_new(self, rows: np.ndarray, n_new: np.ndarray) -> None:
        """Count ``n_new`` (per row of ``rows``) into the counting seeds' memo entries."""
        cnt = self._counting
        done = []
        for k in _where(n_new).tolist():
            r = rows[k]
            m = cnt.memo[r]
            m[3] -= int(n_new[k])
            if m[3] <= 0:
                done.append((cnt.keys[r], m[0]))
                cnt.pop(cnt.keys[r])
        if done:
            # Those pending no longer count (found by time, then key).
            pend = self.pending
            arr = self._parr.get(pend)
            for (key, t), k in zip(done, arr.t.searchsorted([t for _, t in done]).tolist()):
                while k < arr.n and pend[k].t_ns == t:
                    if pend[k].key == key:
                        arr.counting[k] = False
                        break
                    k += 1

    def _set_memo(self, seed: Detection, at: int, not_before_ns: int, wake_ns: int | None, need_new: int,
                  source: tuple[float, float, int] | None = None) -> None:
        """Remember a seed (:attr:`_memo`), the pending detection ``at`` (its index)."""
        if at >= 0:
            self._parr.not_before[at] = not_before_ns
            self._parr.counting[at] = need_new > 0
            self._parr.wake[at] = -1 if wake_ns is None else wake_ns
        self._memo[seed.key] = m = [seed.t_ns, not_before_ns, wake_ns, need_new, self.idx[seed.sensor_id]]
        if source is not None:
            m += source
        if need_new > 0:
            self._counting[seed.key] = m
        else:
            self._counting.pop(seed.key, None)

    def _remember(self, seed: Detection, at: int, now_ns: int, need_new: int = 1) -> None:
        """A seed found no shot: search it again once ``need_new`` more detections have
        landed in its window, and (while its window is still filling) not before its
        age has grown by half, so a seed in a dense stream is searched O(log) times."""
        age = now_ns - seed.t_ns
        if now_ns == NOW_INFINITE or age > self.shot_span_ns + self.cfg.latency_slack_s * NS_PER_S:
            not_before = 0
        else:
            not_before = seed.t_ns + max(int(1.5 * age), int(0.25 * NS_PER_S))
        self._set_memo(seed, at, not_before, None, max(1, need_new))

    def _search(self, now_ns: int, deadline: float | None = None) -> list[Event]:
        """Try each pending detection, in time order, as the first arrival of a shot.

        Seeds are searched a few at a time, in parallel, up to their candidates and the
        chance pre-test (:func:`kernels.search_seeds`); then each, in order, goes
        through the checks and the solve. A search done ahead whose candidate lost
        detections to a shot found meanwhile is done again (one whose window lost only
        others stands: its candidate and pre-test are what a new search would find
        there). When the last step ran out of time (a night with more impulses than the
        search keeps up with), the seeds the nodes rate likelier gunshots than not go
        first: a dispatcher needs those; fireworks are searched with the time left."""
        out: list[Event] = []
        self.search_lag_s = 0.0
        if not self.pending:
            return out
        skip: set[str] = set()      # members of a candidate waiting to mature, this step
        cur = _Batch(self, self.pending)
        pend, alive = cur.pend, cur.alive
        # The ripe seeds not asleep: a seed still counting new detections sleeps until
        # its wake-up clock, if it has one.
        arr = cur.arr
        todo = _where((now_ns - cur.tp >= self._first_search_ns[cur.sp]) & (now_ns >= arr.not_before) &
                      ~(arr.counting & ((arr.wake < 0) | (now_ns < arr.wake)))).tolist()
        if self._behind and self.cfg.overload_gunshots_first:
            todo.sort(key=lambda i: not _gun(pend[i]))      # stable: time order within each
        self._behind = False
        if not todo:
            return out
        # Until when each is explained by an open event (ns; -1: not). When a search opens
        # or grows an event, those still to come are asked again, a chunk at a time as
        # they come up (all of them at once, after every event, made an overloaded
        # night's step quadratic: thousands of seeds waiting, dozens of events found).
        todo_a = np.array(todo, dtype=np.int64)
        todo_t, todo_s = cur.tp[todo_a], cur.sp[todo_a]
        until_at = self._explained_until(todo_t, todo_s).tolist()
        until_gen = [0] * len(todo)     # how many events the step had found when until_at[r] was worked out
        found = 0

        def until(r: int) -> int:
            if until_gen[r] != found:
                hi = min(len(todo), r + _UNTIL_CHUNK)
                until_at[r:hi] = self._explained_until(todo_t[r:hi], todo_s[r:hi]).tolist()
                until_gen[r:hi] = [found] * (hi - r)
            return until_at[r]
        results: dict[str, tuple] = {}  # seed key -> its search, until used
        lost: list[int] = []        # detections shots took (indices), until the searches they affect are dropped
        self._taken = []
        try:
            for q, i in enumerate(todo):
                d = pend[i]
                if deadline is not None and time.perf_counter() > deadline:
                    self.stats.budget_exhausted += 1
                    self._behind = True
                    left = [pend[p] for p in itertools.islice(todo, q, None) if alive[p] and pend[p].key not in skip]
                    if left and now_ns != NOW_INFINITE:
                        due = min(p.t_ns + int(self._first_search_ns[self.idx[p.sensor_id]]) for p in left)
                        self.search_lag_s = max(0.0, (now_ns - due) / NS_PER_S)
                    break
                if d.key in skip or not alive[i]:
                    continue
                until_q = until(q)
                if until_q >= 0:
                    # Not searched while that event is open (nothing can wake it sooner).
                    self.stats.explained += 1
                    self._set_memo(d, i, until_q, None, 0)
                    results.pop(d.key, None)
                    continue
                if lost:
                    # Searches whose windows held a taken detection are done again, unless
                    # they found a candidate that kept every detection.
                    keys = list(results)
                    for r in _where(cur.touched(lost, [results[key][-1] for key in keys])).tolist():
                        row = results[keys[r]]
                        if row[0] != kernels.SEED_CANDIDATE or not alive[row[7]].all():
                            del results[keys[r]]
                    lost = []
                if d.key not in results:
                    nxt = (todo[r] for r in range(q, len(todo))
                           if alive[todo[r]] and pend[todo[r]].key not in results and pend[todo[r]].key not in skip
                           and (r == q or until(r) < 0))
                    results.update(cur.run(list(itertools.islice(nxt, self.search_chunk))))
                known = self._medium_known()
                ev = self._search_seed(d, i, results.pop(d.key), now_ns, skip, cur)
                if self._medium_known() != known:
                    # The first estimate of the wind (or of the speed of sound) narrows
                    # the search windows: search again. (Later estimates move them a
                    # little; the searches done this step keep the ones they started with.)
                    results.clear()
                if self._taken:
                    lost += cur.take(self._taken)
                    self._taken = []
                if ev is not None:
                    out.append(ev)
                    found += 1
                    if self.open and q + 1 < len(todo):
                        # (The tables the answers come from, brought up to date now, as
                        # asking then did: a new event's arrivals are predicted with the
                        # medium as it is now.)
                        self._open_arrivals()
        finally:
            # (The pending list is the batch's: a search only takes detections out.)
            cur.take(self._taken)
            self._taken = None
            if not cur.alive.all():
                self.pending = self._parr.filtered(cur.pend, cur.alive)
        return out

    def _search_seed(self, seed: Detection, at: int, found: tuple, now_ns: int, skip: set[str],
                     cur: _Batch) -> Event | None:
        """The checks and the solve for a seed (the pending detection ``at``) searched by
        :meth:`_Batch.run` (``cur``): ``found`` is its row there, ``(status, count, x m, y
        m, emission offset s, chance pre-test, with five free, the candidate's detections
        (indices in ``cur``), the open event nearby, the open events' table generation it
        was found at, the seed's index)``."""
        cfg = self.cfg
        status, count, x0, y0, tau0, prob, prob5, cand, near, near_gen, _ = found
        if status == kernels.SEED_FEW:
            self._remember(seed, at, now_ns, need_new=cfg.min_sensors - count)
            return None
        self.stats.searches += 1
        if status == kernels.SEED_WEAK:
            # Each new detection adds at most one sensor to any source's count.
            self._remember(seed, at, now_ns, need_new=cfg.min_sensors - count)
            return None
        n_cand = len(cand)
        if n_cand < cfg.min_sensors:
            self._remember(seed, at, now_ns, need_new=cfg.min_sensors - n_cand)
            return None
        pend = cur.pend
        # Alert as soon as the solution can be good: when enough sensors have reported,
        # or when sound has had time to reach every sensor within settle_range_m.
        t0_guess_ns = seed.t_ns + int(tau0 * NS_PER_S)
        mature_at = t0_guess_ns + int((cfg.settle_range_m / self.c + cfg.latency_slack_s) * NS_PER_S)
        if n_cand < cfg.early_alert_sensors and now_ns < mature_at:
            for k in cand[cur.tp[cand].argsort(kind="stable")].tolist():     # (in time order)
                d = pend[k]
                self._set_memo(d, k, 0, mature_at, cfg.early_alert_sensors - n_cand, (x0, y0, t0_guess_ns))
                skip.add(d.key)
            return None
        # The seed's last candidate that got no further (its detections; their keys are
        # worked out when the seed gets this far again, as about half do).
        ids = cand.tolist()
        got = operator.itemgetter(*ids)(pend) if len(ids) > 1 else tuple(pend[k] for k in ids)
        before = self._failed.get(seed.key)
        if before is not None and frozenset(map(_KEY, got)) <= frozenset(map(_KEY, before)):
            self._remember(seed, at, now_ns)       # the same candidate failed before: nothing new
            return None
        self._failed[seed.key] = got
        # (Most candidates of a crowded night end at the chance pre-test below: their
        # detections are gathered in time order, as the merge and the fit take them,
        # only past it.)
        def in_order() -> list[Detection]:
            return [pend[k] for k in cand[cur.tp[cand].argsort(kind="stable")].tolist()]
        if near_gen == self._open_tab.gen:
            twin = self.open[near] if near >= 0 else None        # (as the search found it)
        else:
            twin = self._near_event(x0, y0, t0_guess_ns)
        if twin is not None:
            # A shot already located (a late arrival or an echo of it seeded this search):
            # offer the candidate's new sensors to that event instead of solving it anew.
            merged = self._merge(twin, in_order())
            if merged is None:
                self._remember(seed, at, now_ns)
            return merged
        # Before the solve: could this many detections pass the chance-alignment test
        # at all? (The solve can only drop detections and widen the window.)
        if prob > cfg.max_chance_probability or prob5 > cfg.max_chance_probability:
            # (With this many detections the fit estimates the wind too: two more unknowns
            # that line up detections whatever they are. Should the wind solve fail, the
            # fit with the wind given could pass with two fewer; a candidate is rarely
            # that, and it is searched again.)
            self.stats.chance += 1
            self._remember(seed, at, now_ns)
            return None
        cand = in_order()
        fit = self._fit(cand, (x0, y0))
        if fit is None:
            self._remember(seed, at, now_ns)
            return None
        sol, mine, t0_ns, aerial = fit
        twin = self._same_shot(sol, t0_ns)
        if twin is not None:
            # The same shot found twice (its detections arrived in two groups): merge
            # into the open event rather than publish a duplicate.
            merged = self._merge(twin, cand)
            if merged is None:
                self._remember(seed, at, now_ns)
            return merged
        if self._chance_probability(sol, t0_ns, mine) > cfg.max_chance_probability:
            # As many sensors would line up this well by chance at the detection rates
            # they report now (a fireworks night): not a located shot.
            self.stats.chance += 1
            self._remember(seed, at, now_ns)
            return None
        if not self._heard_by_nearer(sol, t0_ns, now_ns, mine):
            # Sensors nearer than those used should have heard a real shot and did not:
            # the candidate mixes detections of different sounds (or echoes).
            self.stats.silent_neighbours += 1
            self._remember(seed, at, now_ns)
            return None
        if self._is_echo(sol, t0_ns, len(mine)):
            # Late, weaker copy of a shot just located nearby: reflections from facades
            # line up by chance. Its detections are spent; no event.
            self.stats.echoes += 1
            self._consume(mine)
            return None
        first = self._first_arrival(sol, mine, t0_ns, cur)
        ev = self._make_event(sol, mine, t0_ns, aerial, event_id=_event_id([first.key]))
        self._consume(mine)
        close_at = t0_ns + int((self.max_travel_s + 2 * self.cfg.latency_slack_s) * NS_PER_S)
        self._add_open(_Open(ev, sol, mine, close_at, t0_ns))
        self.stats.events += 1
        return ev

    def _first_arrival(self, sol: Solution, mine: list[Detection], t0_ns: int, cur: _Batch) -> Detection:
        """The detection a new shot is named after: its first arrival. A search may reach
        a shot from a later arrival while the first waits to be searched again (it
        joins the event at the next step), so the earliest pending detection that
        arrives where the solution predicts (within the gate an open event attaches
        by, nearest the prediction at its sensor) counts too, if earlier than the fit's
        own: two locators on one stream, stepping at different moments, must publish
        each shot under one id."""
        first = min(mine, key=lambda d: (d.t_ns, d.sensor_id))
        n = int(cur.tp.searchsorted(first.t_ns))
        if n == 0:
            return first
        pred, gate = self._predict(sol, t0_ns, mine, keep=True)[:2]
        live = _where(cur.alive[:n])
        miss = np.abs(cur.tp[live] - pred[cur.sp[live]])
        ok = _where(miss <= gate[cur.sp[live]])
        if ok.size == 0:
            return first
        # Per sensor the detection nearest its prediction; of those, the earliest.
        best: dict[int, tuple[int, int]] = {}       # sensor -> (miss ns, batch index)
        for i, m in zip(live[ok].tolist(), miss[ok].tolist()):
            s = int(cur.sp[i])
            if s not in best or m < best[s][0]:
                best[s] = (m, i)
        return min((cur.pend[i] for _, i in best.values()), key=lambda d: (d.t_ns, d.sensor_id))

    def _grid_search(self, s0: int, t: np.ndarray, offsets: np.ndarray):
        """The anchored grid search (:func:`kernels.seed_coherence`) over the seed's
        region, refined around several separate peaks. Returns ``(x, y, half window s)``,
        or the best count when it is below ``min_sensors``."""
        cfg = self.cfg
        gx, gy = self._region(s0)
        hw_c = cfg.coarse_cell_m * math.sqrt(2) / self.c + 2 * cfg.window_tol_s
        cnt, cost = self._grid(gx, gy, s0, t, offsets, hw_c)
        n_max = int(cnt.max())
        if n_max < cfg.min_sensors:
            return n_max
        # In a crowded window chance alignments fill the coarse grid's wide windows as well
        # as the true source does, so several separate coarse peaks are refined, each
        # level a quarter the cell and a window to match, and compared at the finest.
        peaks = kernels.grid_peaks(gx, gy, cnt, cost, max(cfg.min_sensors, n_max - cfg.refine_depth),
                                   2.0 * cfg.coarse_cell_m, cfg.refine_best)
        bx, by = gx[peaks], gy[peaks]
        cell = cfg.coarse_cell_m
        while True:
            half, cell = 1.5 * cell, max(cell / 4.0, cfg.fine_cell_m)
            off = np.arange(-half, half + 1e-9, cell)
            ox, oy = np.meshgrid(off, off, indexing="ij")
            m = ox.size
            fgx = np.ascontiguousarray((bx[:, None] + ox.ravel()[None, :]).ravel())
            fgy = np.ascontiguousarray((by[:, None] + oy.ravel()[None, :]).ravel())
            hw = cell * math.sqrt(2) / self.c + 2 * cfg.window_tol_s
            cnt_f, cost_f = self._grid(fgx, fgy, s0, t, offsets, hw)
            # The best node around each peak (count, then tightness).
            key = cnt_f.reshape(-1, m) - cost_f.reshape(-1, m) / (len(self.layout) * hw + 1.0)
            h = np.argmax(key, axis=1) + m * np.arange(len(bx))
            bx, by = fgx[h], fgy[h]
            if cell <= cfg.fine_cell_m + 1e-9:
                break
        b = int(np.lexsort((cost_f[h], -cnt_f[h]))[0])
        return float(bx[b]), float(by[b]), hw

    def _heard_by_nearer(self, sol: Solution, t0_ns: int, now_ns: int, dets: list[Detection]) -> bool:
        """Check that sensors nearer than the farthest one used heard the shot.

        A sensor counts as silent when its predicted arrival (plus the latency allowance)
        is already past and it has no detection within the gate of it. A real shot may
        be masked at a sensor or two; a chance alignment of unrelated detections is
        contradicted by most of its neighbours."""
        used = {d.sensor_id for d in dets}
        src = np.array([sol.x_m, sol.y_m, sol.z_m])
        dist = np.linalg.norm(self.pos - src, axis=1)
        r_used = max(dist[self.idx[s]] for s in used)
        # How loud was it? Back-project the onset SNRs to 1 m; a nearer sensor only
        # "should have heard" the shot if it would have had a comfortable SNR.
        lv = [d.snr_db + 20 * math.log10(max(dist[self.idx[d.sensor_id]], 1.0))
              for d in dets if d.snr_db is not None]
        src_db = float(np.median(lv)) if lv else None
        checked = silent = heard_used = 0
        near = _where(dist < r_used)        # (only those nearer count)
        for k, d_k in zip(near.tolist(), dist[near].tolist()):
            sid = self._sids[k]
            if sid in used:
                heard_used += 1
                continue
            if src_db is not None and src_db - 20 * math.log10(max(d_k, 1.0)) < self.cfg.certain_snr_db:
                continue
            pred = t0_ns + int(d_k / self.c * NS_PER_S)
            if now_ns != NOW_INFINITE and pred + self.cfg.latency_slack_s * NS_PER_S > now_ns:
                continue
            gate = self._gate_s(d_k) * NS_PER_S
            h = self.history.get(sid, ())
            # A late first arrival (blocked direct path, echo) still shows the sensor heard it.
            late = self.cfg.late_allowance_s * NS_PER_S
            i = bisect.bisect_left(h, pred - gate)
            if i < len(h) and h[i] <= pred + gate + late:
                checked += 1
                continue
            # A node does not report an impulse soon after a louder one (it takes it for
            # that one's echo, or its trigger is still saturated): a sensor that had just
            # triggered on something at least about as loud as this shot would have been
            # there may have been masked. Only known levels count.
            if i > 0 and h[i - 1] >= pred - self.cfg.masked_window_s * NS_PER_S and src_db is not None:
                prev = self._snr.get((sid, h[i - 1]))
                if prev is not None and prev >= src_db - 20 * math.log10(max(d_k, 1.0)) - self.cfg.masked_db:
                    continue
            checked += 1
            silent += 1
        # The allowed share is of every nearer sensor that should have heard it, those
        # used included (they heard it where the solution says). The unused ones alone
        # are the sensors that did not fit, so a real shot's misses crowd them: a shot
        # heard by forty sensors, four nearer ones missing it and the nearest three
        # hearing it late (blocked paths), was "contradicted" by four of its twelve
        # unused nearer sensors, at a chance-alignment probability of 1e-70.
        return silent <= max(self.cfg.max_silent, int(self.cfg.max_silent_fraction * (checked + heard_used)))

    def _label_chance(self, dets: list[Detection], x: float, y: float, z: float, w_s: float, t0_ns: int,
                      n_free: int) -> float:
        """:func:`kernels.label_chance` of ``dets`` from the source ``(x, y, z)`` m, within
        +-``w_s`` s, at the sensors' rates around ``t0_ns``."""
        return kernels.label_chance(x, y, z, self._spx, self._spy, self._spz,
                                    np.array([self.idx[d.sensor_id] for d in dets], dtype=np.int64),
                                    np.array([_gun(d) for d in dets], dtype=np.bool_),
                                    w_s, *self._rates(t0_ns), n_free)

    def _chance_probability(self, sol: Solution, t0_ns: int, dets: list[Detection]) -> float:
        """Probability that detections of unrelated impulses would line up as well as
        ``dets`` (a fit's used detections) do: the false-alarm probability of one candidate.

        Each sensor within the farthest used one's range has a detection within +-w of
        its predicted arrival by chance with probability ``1 - exp(-rate * 2w)``, its rate
        measured over the 20 s around the shot (as much of it as has been seen) and ``w``
        three times the larger of the fit's residual RMS and the detections' median
        stated sigma (a fit to a few detections can be tighter than the errors allow).
        The count of such sensors is Poisson-binomial; the fit's unknowns (source,
        emission time, wind) line up that many detections whatever they are, so the
        evidence is the count beyond them. On a quiet night five sensors are ample; on a
        fireworks night, when every sensor reports several impulses a second, it takes
        more, unless the nodes rated the detections gunshots: the same test on those
        alone, at the rate of gunshot-rated detections (:func:`kernels.label_chance`)."""
        sig = _median(self._sigma(dets)) if dets else self.cfg.model_sigma_s
        # The fit chose the source and emission time to line up its detections: that many
        # of them (the unknowns) line up whatever they are; the rest are the evidence.
        n_unknowns = sol.ndim + 1 + (2 if sol.wind_estimated else 0)
        return self._label_chance(dets, sol.x_m, sol.y_m, sol.z_m, 3.0 * max(sol.residual_rms_s, sig), t0_ns,
                                  n_unknowns)

    def _rates(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Each sensor's rate (per s) of detections, and of gunshot-rated ones, over the
        20 s around ``t_ns`` (as much of it as the histories cover). Cached per second of
        ``t_ns`` within a step."""
        b = t_ns // NS_PER_S
        got = self._rate_cache.get(b)
        if got is None:
            got = self._rate_cache[b] = np.zeros((2, len(self.layout)))
            t_all, off_all, t_gun, off_gun = self._flat_history()
            kernels.rate_row(t_all, off_all, b, self._seen_from, self._seen_to, got[0])
            kernels.rate_row(t_gun, off_gun, b, self._seen_from, self._seen_to, got[1])
        return got[0], got[1]

    def _flat_history(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The sensor histories as arrays for the kernels: (times ns, offsets by sensor
        index) of all detections, then of gunshot-rated ones. Kept up to date (every step
        feeds some and expires some, and gathering a fireworks night's histories
        from their lists anew each step cost 4% of it): what was fed since is merged in,
        and the expiry cuts them as it cuts the lists (:meth:`_cut_flat_history`)."""
        if self._flat is None:
            flat = []
            for hist in (self.history, self.gun_history):
                lists = [hist.get(sid, ()) for sid in self._sids]
                off = _offsets([len(h) for h in lists])
                flat += [np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(off[-1])), off]
            self._flat = tuple(flat)
            self._flat_add = []
        elif self._flat_add:
            self._cut_flat_history(-NOW_INFINITE)
        return self._flat

    def _cut_flat_history(self, cut_ns: int) -> None:
        """Merge what was fed since into the flat histories (if built), and drop their
        times before ``cut_ns``."""
        if self._flat is None:
            return
        add = self._flat_add
        add_s = np.fromiter((a[0] for a in add), dtype=np.int64, count=len(add))
        add_t = np.fromiter((a[1] for a in add), dtype=np.int64, count=len(add))
        gun = np.fromiter((a[2] for a in add), dtype=np.bool_, count=len(add))
        t_all, off_all, t_gun, off_gun = self._flat
        self._flat = (kernels.hist_update(t_all, off_all, add_s, add_t, cut_ns) +
                      kernels.hist_update(t_gun, off_gun, add_s[gun], add_t[gun], cut_ns))
        self._flat_add = []

    def _arrivals_all(self, op: _Open) -> tuple:
        """``(version,) +`` :meth:`_predict` of an open event: its predicted arrival (ns)
        at every sensor and how far (ns) a detection may sit from it to join, and the
        rest. Cached per event version."""
        if op.arrivals is None or op.arrivals[0] != op.event.version:
            op.arrivals = (op.event.version,) + self._predict(op.sol, op.t0_ns, op.dets)
        return op.arrivals

    def _predict(self, sol: Solution, t0_ns: int, dets: list[Detection], keep: bool = False) -> tuple:
        """A solution's predicted arrival (ns) at every sensor and its gate (ns: 3 sigma
        of the prediction from the solution's covariance, and the wind); the sensors of
        ``dets`` get -1 and 0 (never match). Then, for :meth:`_explained_until`,
        the arrivals at its own sensors and at those no farther than they are (beyond,
        its arrivals are not heard, and on a crowded night every detection would be
        near some far event's prediction), all gates, the distances (m) (also as a
        list), the sensor indices of ``dets``, the farthest of them (m) and the sensors
        in order of distance (:func:`kernels.event_arrivals`). With ``keep``, held with
        the solution for the next call for the same emission time, detections and
        medium, which takes it (a new shot's are asked for twice, naming it and opening
        it; closed events must not hold them)."""
        used = [self.idx[d.sensor_id] for d in dets]
        key = (t0_ns, used, self.c, self._medium_err())
        got = sol.__dict__.pop("_predicted", None)
        if got is not None and got[0] == key:
            return got[1]
        n = len(self.layout)
        own_pred, heard_pred = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        own_gate, gate, dist, order = np.empty(n), np.empty(n), np.empty(n), np.empty(n, dtype=np.int64)
        k = [0, 1, sol.ndim]                        # x, y, emission time (a 3-D solution has z at 2)
        # (The gate is _gate_s's, 3 sigma of the prediction from the solution's covariance.)
        r_used = kernels.event_arrivals(self._spx, self._spy, self._spz, float(sol.x_m), float(sol.y_m),
                                        float(sol.z_m), int(t0_ns), float(self.c),
                                        np.ascontiguousarray(sol.cov[k][:, k]), float(self.cfg.gate_s),
                                        float(self._medium_err()), float(self.c**2), np.array(used, dtype=np.int64),
                                        -NOW_INFINITE, own_pred, own_gate, heard_pred, gate, dist, order)
        out = own_pred, own_gate, heard_pred, gate, dist, used, dist.tolist(), float(r_used), order
        if keep:
            sol.__dict__["_predicted"] = (key, out)
        return out

    def _open_arrivals(self) -> tuple[np.ndarray, ...]:
        """The open events' rows of :meth:`_predict`, as matrices (events in ``open``'s
        order, by sensor): own predicted arrivals and gates (the attach step), arrivals
        and gates for :meth:`_explained_until`, the events' closing times (ns), the
        distances (m) and the sensors in order of distance. Kept between calls: a new
        event adds its row, a new version rewrites its own (:meth:`_grow` lists it), and
        only a change in which events are open rebuilds them (with a thousand open events
        in a dense city, stacking every row anew for each new event cost more than the
        search it served)."""
        tab = self._arr_tab
        n = len(self.open)
        if tab is not None and tab["out"] is not None and n == tab["n"] and not self._arr_stale:
            return tab["out"]       # (nothing changed since it was last asked: most asks of a step)
        if tab is None:
            cap = max(64, 2 * n)
            tab = self._arr_tab = {"n": 0, "row": {}, "ver": [], "close": np.empty(cap, dtype=np.int64),
                                   "m": [np.empty((cap, len(self.layout)), dtype=t)
                                         for t in (np.int64, np.float64, np.int64, np.float64, np.float64, np.int64)],
                                   "out": None}
            self._arr_stale = []
        row, ver, m = tab["row"], tab["ver"], tab["m"]
        if n > m[0].shape[0]:
            cap = 2 * n
            tab["m"] = m = [np.concatenate([a, np.empty((cap - a.shape[0], a.shape[1]), dtype=a.dtype)]) for a in m]
            tab["close"] = np.concatenate([tab["close"], np.empty(cap - len(tab["close"]), dtype=np.int64)])
        # Events that are new (appended to the open list) or have new versions.
        todo = [(k, op) for k, op in ((row.get(id(op)), op) for op in self._arr_stale) if k is not None]
        todo += list(enumerate(itertools.islice(self.open, tab["n"], None), tab["n"]))
        self._arr_stale = []
        for k, op in todo:
            if k < len(ver) and ver[k] == op.event.version:
                continue
            arr = self._arrivals_all(op)
            for a, r in zip(m, (arr[1], arr[2], arr[3], arr[4], arr[5], arr[9])):
                a[k] = r
            tab["close"][k] = op.close_at_ns
            if k < len(ver):
                ver[k] = op.event.version
            else:
                row[id(op)] = k
                ver.append(op.event.version)
        tab["n"] = n
        tab["out"] = tuple(a[:n] for a in m[:4]) + (tab["close"][:n], m[4][:n], m[5][:n])
        return tab["out"]

    def _explained_until(self, t_ns: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Whether each detection (times ns, sensor indices) is the arrival, early by at
        most the gate or late by at most ``late_allowance_s`` more, of a shot already
        located and still open (its own sensors' included: a second detection there is
        the shot's echo): the clock (ns) at which the last event explaining it closes,
        or -1 (:func:`kernels.explained_until_many`). Such a detection is not tried as the
        first arrival of a new shot: the node's dead time means one detection cannot be
        two arrivals, and a new shot there is found from its other sensors' detections."""
        out = np.full(len(t_ns), -1, dtype=np.int64)
        if self.open and len(t_ns):
            pred, gate, close = self._open_arrivals()[2:5]
            kernels.explained_until_many(pred, gate, close, s, t_ns, self.cfg.late_allowance_s * NS_PER_S, out)
        return out

    def _consume(self, dets: list[Detection]) -> None:
        """Take detections out of the pending list: they now belong to a shot (or an
        echo of one). They still show that their sensor heard something then: a node
        cannot trigger twice within its dead time, so one detection may stand for two
        shots' arrivals. (During a search they are noted in ``_taken``, and the search
        takes them all out when it ends.)"""
        if self._taken is not None:
            self._taken += dets     # the search takes them out of pending when it ends
        else:
            keys = {d.key for d in dets}
            self.pending = self._parr.filtered(self.pending, np.array([d.key not in keys for d in self.pending],
                                                                      dtype=np.bool_))

    def _is_echo(self, sol: Solution, t0_ns: int, n_sensors: int) -> bool:
        """Whether an open or closed event up to ``echo_window_s`` earlier, within
        ``echo_radius_m``, used more than twice ``n_sensors``."""
        for t0, ex, ey, _, n in (self._open_table(), self._recent_table()):
            if kernels.louder_before(t0, ex, ey, n, t0_ns, sol.x_m, sol.y_m, self.cfg.echo_window_s * NS_PER_S,
                                     self.cfg.echo_radius_m, n_sensors):
                return True
        return False

    def _same_shot(self, sol: Solution, t0_ns: int) -> _Open | None:
        """An open or recent event that is this solution's shot: as close in time, and
        closer than ``same_shot_m`` plus both 95% ellipses' major semi-axes (a shot's
        detections found in two groups give two rough solutions of one place)."""
        return self._shot_at(sol.x_m, sol.y_m, t0_ns, sol.ellipse95()[0], recent=True)

    def _near_event(self, x: float, y: float, t0_ns: int) -> _Open | None:
        """An open event that a search's rough source (before its solve) belongs to: as
        close in time as one shot, within the event's ellipse plus the search's
        resolution and ``same_shot_m``."""
        return self._shot_at(x, y, t0_ns, self.cfg.coarse_cell_m)

    def _shot_at(self, x: float, y: float, t0_ns: int, radius_m: float, recent: bool = False) -> _Open | None:
        """The first open event (then, with ``recent``, the closed one nearest in time)
        within ``same_shot_s`` of ``t0_ns`` and within ``same_shot_m`` + ``radius_m`` +
        its own ellipse's major semi-axis of (x, y)."""
        def hit(table, first):
            t0, ex, ey, major, _ = table
            return kernels.event_near(t0, ex, ey, major, t0_ns, float(x), float(y), self.cfg.same_shot_s * NS_PER_S,
                                      self.cfg.same_shot_m + radius_m, first)
        i = hit(self._open_table(), True)
        if i >= 0:
            return self.open[i]
        if recent:
            i = hit(self._recent_table(), False)
            if i >= 0:
                return self.recent[i]
        return None

    def _add_open(self, op: _Open) -> None:
        self.open.append(op)
        self._open_tab.append(op)

    def _open_closed(self, kept: np.ndarray | None = None, still: list[_Open] | None = None) -> None:
        """Events left the open list: only those ``kept`` (bool, by place in the list)
        stay, and the list is now ``still``; its tables keep those rows. Without
        ``kept``, all of them left (or it is not known which): the tables are rebuilt
        when next asked for."""
        if kept is None:
            self._open_tab.invalidate()
            self._arr_tab = None
            return
        tab = self._arr_tab
        if tab is not None:
            idx = _where(kept[:tab["n"]])
            m = len(idx)
            for a in tab["m"] + [tab["close"]]:
                a[:m] = a[idx]
            tab["ver"] = [tab["ver"][k] for k in idx.tolist()]
            tab["row"] = {id(op): k for k, op in enumerate(itertools.islice(still, m))}
            tab["n"], tab["out"] = m, None
        self.open = still
        self._open_tab.keep(kept, still)

    def _open_table(self) -> tuple[np.ndarray, ...]:
        """The open events' emission times (ns), positions (m), ellipses' major
        semi-axes (m) and detection counts (:class:`_EventTable`)."""
        return self._open_tab.rows(self.open)

    def _recent_table(self) -> tuple[np.ndarray, ...]:
        """:meth:`_open_table` for the closed events (``recent``, in its order)."""
        return self._recent_tab.rows(self.recent)

    def _merge(self, op: _Open, cand: list[Detection]) -> Event | None:
        have = {d.sensor_id for d in op.dets}
        extra = [d for d in cand if d.sensor_id not in have]
        op.add_tried(cand)
        if not extra:
            return None
        return self._grow(op, extra)[0]

    def _grow(self, op: _Open, extra: list[Detection], consume: bool = True) -> tuple[Event | None, int]:
        """Re-solve an open event with extra detections; keep the result only if it uses
        more detections than before. Returns (the new version or None, extras kept).
        With ``consume`` False the caller takes the kept detections out of pending."""
        dets = op.dets + extra
        ev, sol, t0_ns = self._solve(dets, (op.sol.x_m, op.sol.y_m), event_id=op.event.event_id,
                                     version=op.event.version + 1, incident_id=op.event.incident_id)
        if ev is None or len(ev.detections) <= len(op.dets):
            return None, 0
        keep = set(ev.detections)
        mine = [d for d in dets if d.key in keep]
        if consume:
            self._consume(mine)
        op.event, op.sol, op.dets, op.t0_ns = ev, sol, mine, t0_ns
        op.view = None                  # (its hearing cache was this version's)
        self._open_tab.changed(op)
        self._recent_tab.changed(op)    # (a closed event may grow too: _same_shot)
        self._arr_stale.append(op)
        self.stats.updates += 1
        return ev, sum(d.key in keep for d in extra)

    def _hyp_window_s(self) -> float:
        """Half window (s) within which a triple's source must predict a detection to
        count a sensor: the tolerance, and the medium's uncertainty (wind, speed of
        sound) over a few hundred m."""
        return 2 * self.cfg.window_tol_s + self._medium_err() * self.cfg.hyp_wind_range_m / self.c**2

    def _wind_sd(self) -> float:
        """Uncertainty (m/s) of the regional wind the locator currently assumes."""
        return self.cfg.wind_uncertainty_m_per_s if self.wind_known else self.cfg.max_wind_m_per_s

    def _medium_err(self) -> float:
        """How far (m/s) the sound's speed along a path may be off what the locator
        assumes: the wind's uncertainty, and 3 sigma of the speed of sound's."""
        return self._wind_sd() + 3.0 * self.c_sd

    def _medium_known(self) -> tuple[bool, bool]:
        """Whether the wind, and the speed of sound, have been measured."""
        return self.wind_known, bool(self._cs[0])

    def _gate_s(self, dist_m, sd_pred_s=0.0):
        """How far (s) a detection at ``dist_m`` may sit from its predicted arrival: the
        gate, 3 sigma of the prediction, and the medium's error's ``e d / c^2``
        (:meth:`_medium_err`)."""
        return self.cfg.gate_s + 3.0 * sd_pred_s + self._medium_err() * dist_m / self.c**2

    def _region(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Sensor ``k``'s seed region: the coarse nodes' (x, y) m where it is at most
        ``seed_region_m`` farther than the nearest sensor. Only the grid search asks
        (where no triple forms: a few seeds a night), so each is found when first asked
        for (all of them took a twentieth of a fireworks night's replay). The nodes are a
        grid: those within reach are in the box of rows and columns around the sensor."""
        got = self._regions.get(k)
        if got is None:
            cgx, cgy, d_min = self._nodes
            gx, gy = self._node_axes
            reach = float(d_min.max()) + self.cfg.seed_region_m
            x, y = self.pos[k, 0], self.pos[k, 1]
            rows = np.arange(np.searchsorted(gx, x - reach), np.searchsorted(gx, x + reach, side="right"))
            cols = np.arange(np.searchsorted(gy, y - reach), np.searchsorted(gy, y + reach, side="right"))
            cand = (rows[:, None] * len(gy) + cols[None, :]).ravel()       # (ascending)
            d_k = np.hypot(cgx[cand] - x, cgy[cand] - y)
            sel = cand[d_k <= d_min[cand] + self.cfg.seed_region_m]
            got = self._regions[k] = (np.ascontiguousarray(cgx[sel]), np.ascontiguousarray(cgy[sel]))
        return got

    def _grid(self, gx, gy, s0, t, offsets, half_window_s):
        n = len(gx)
        cnt = np.zeros(n, dtype=np.int64)
        cost = np.zeros(n)
        kernels.seed_coherence(gx, gy, float(self.z_src), self._spx, self._spy, self._spz, int(s0), t, offsets,
                               float(self.c), float(self.wind[0]), float(self.wind[1]), float(half_window_s),
                               cnt, cost)
        return cnt, cost

    def _solve(self, dets: list[Detection], xy0, event_id: str, version: int, incident_id: str | None = None):
        """Fit ``dets`` and make that event's ``version``: (event, solution, emission time
        ns), or Nones."""
        fit = self._fit(dets, xy0)
        if fit is None:
            return None, None, None
        sol, used, t0_ns, aerial = fit
        ev = self._make_event(sol, used, t0_ns, aerial, event_id=event_id, version=version, incident_id=incident_id)
        return ev, sol, t0_ns

    def _fit(self, dets: list[Detection], xy0):
        """:meth:`_fit_timed`, its compute time counted (:attr:`time_s`)."""
        t0 = time.perf_counter()
        try:
            return self._fit_timed(dets, xy0)
        finally:
            self._fit_s += time.perf_counter() - t0

    def _fit_timed(self, dets: list[Detection], xy0):
        """The robust fit (3-D if the source was clearly in the air). Returns (solution,
        the detections it used, emission time ns, aerial) when it is good enough to
        publish (``min_sensors`` used, RMS under :meth:`_max_rms`), else None. Its only
        effect is on the regional wind (:meth:`_learn_wind`): a candidate may still be
        rejected after its fit, so incidents and ids wait for :meth:`_make_event`."""
        n = len(dets)
        idx = self.idx
        # The times (s after the earliest; exact integers over exact 1e9, as in Python),
        # positions, sigmas (:meth:`_sigma`) and the start's emission time: one
        # compiled pass, numpy's arithmetic.
        raw = np.array([d.t_ns for d in dets] + [idx[d.sensor_id] for d in dets] + [d.t_sigma_ns for d in dets],
                       dtype=np.int64).reshape(3, n)
        t, cols, sig, off = np.empty(n), np.empty((3, n)), np.empty(n), np.empty(3)
        t_ref, t_min, valid, sig_median, sig_ms = kernels.fit_inputs(
            raw, self.pos, float(xy0[0]), float(xy0[1]), float(self.z_src), *self._sigma_added(), t, cols, sig, off)
        if not valid:
            raise ValueError("positions and times must be finite and sigmas positive")
        pos = cols.T
        # (np.linalg.norm of a vector: the square root of its dot product.)
        x0 = [xy0[0], xy0[1], float(t_min - math.sqrt(off.dot(off)) / self.c)]
        est = self.cfg.estimate_wind and n >= self.cfg.wind_min_sensors
        if est and n >= _RANSAC_BELOW:
            sol = wind_robust_on_arrays(pos, cols, t, sig, c_m_per_s=float(self.c), z_src_m=float(self.z_src),
                                        x0=np.array(x0), wind=self.wind.copy(), wind_sigma_m_per_s=self._wind_sd(),
                                        min_wind_used=self.cfg.wind_min_sensors, c_sigma_m_per_s=self.c_sd)
        else:
            solver = locate_wind_robust if est else locate
            sol = solver(pos, t, sig, c_m_per_s=self.c, z_src_m=self.z_src, x0=x0, wind_m_per_s=self.wind,
                         wind_sigma_m_per_s=self._wind_sd(), c_sigma_m_per_s=self.c_sd,
                         **({"min_wind_used": self.cfg.wind_min_sensors} if est else {}))
        aerial = False
        # A source well above the ground shows in a 2-D fit as large residuals or
        # dropped detections (its height is worth tens of ms at the nearest sensors);
        # only then is the 3-D solve worth its cost.
        if n >= self.cfg.aerial_min_sensors and (
                sol is None or n - sol.n_used >= max(2, 0.25 * n) or sol.residual_rms_s > 2.0 * sig_median):
            sol3 = self._aerial(pos, t, sig, sol, x0)
            if sol3 is not None:
                sol, aerial = sol3, True
        # The fit must be as good as the timing allows.
        if sol is None or sol.n_used < self.cfg.min_sensors or sol.residual_rms_s > self._max_rms(sig_ms):
            return None
        used = [d for d, u in zip(dets, sol.used) if u]
        t0_ns = t_ref + int(round(sol.t0_s * NS_PER_S))
        self._learn_c(sol, pos, sig, t0_ns)
        self._learn_wind(sol)
        return sol, used, t0_ns, aerial

    def _learn_c(self, sol: Solution, pos: np.ndarray, sig: np.ndarray, t0_ns: int) -> None:
        """The speed of sound is shared by every sound in the region too, and the
        configured temperature is rarely the air's (night and day differ by 10 C, 6 m/s;
        1% off in ``c`` moves a shot outside the array by metres): each fit using
        ``c_min_sensors`` or more (with the wind estimated, when it is) measures it, as one
        more unknown (:func:`kernels.c_offset`), and the regional speed is the median of
        the measurements from shots in the last ``c_window_s`` (at least ``c_history`` of
        them), its uncertainty theirs. Before the first, the configured temperature's
        ``temperature_sigma_c`` stands. Every good fit counts, as for the wind, but at
        most one per half second of shots."""
        cfg = self.cfg
        if (not cfg.estimate_c or cfg.temperature_sigma_c <= 0 or sol.n_used < cfg.c_min_sensors or
                (cfg.estimate_wind and not sol.wind_estimated)):
            return
        ts, cs, sds = self._cs
        if ts and abs(t0_ns - ts[-1]) < _C_EVERY_NS:
            return                          # (a fireworks night makes dozens a second)
        par = np.array([sol.x_m, sol.y_m] + ([sol.z_m] if sol.ndim == 3 else []) + [sol.t0_s] +
                       (list(sol.wind_m_per_s) if sol.wind_estimated else []))
        u = sol.used
        dc, info = kernels.c_offset(np.ascontiguousarray(pos[:, 0]), np.ascontiguousarray(pos[:, 1]),
                                    np.ascontiguousarray(pos[:, 2]), sig, u, par, sol.ndim, float(self.z_src),
                                    float(self.c), sol.wind_estimated, sol.residuals_s)
        if info <= 0.0:
            return
        # The residuals' scale once c is free too (the step takes dc^2 info off chi^2).
        dof = max(1, sol.n_used - len(par) - 1)
        chi2 = float(((sol.residuals_s[u] / sig[u]) ** 2).sum()) - dc * dc * info
        sd = math.sqrt(max(1.0, chi2 / dof) / info)
        c_new = self.c + dc
        # Only a measurement that says more than the configured temperature (and one a
        # thermometer could read: -40..+50 C).
        if sd > self._c_prior_sd or not 306.0 <= c_new <= 361.0:
            return
        ts.append(t0_ns)
        cs.append(c_new)
        sds.append(sd)
        c_sorted, sd_sorted = self._cs_sorted        # (the same, kept sorted for the medians)
        bisect.insort(c_sorted, c_new)
        bisect.insort(sd_sorted, sd)
        while len(ts) > cfg.c_history and (ts[-1] - ts[0] > cfg.c_window_s * NS_PER_S or len(ts) > _C_MAX_ESTIMATES):
            ts.popleft()
            del c_sorted[bisect.bisect_left(c_sorted, cs.popleft())]
            del sd_sorted[bisect.bisect_left(sd_sorted, sds.popleft())]
        n = len(cs)
        self.c = _sorted_median(c_sorted)
        spread = 1.4826 * _median(np.abs(np.array(c_sorted) - self.c)) if n >= 3 else 0.0
        self.c_sd = max(_C_SD_FLOOR, _sorted_median(sd_sorted) / math.sqrt(n), 1.2533 * spread / math.sqrt(n))

    def _learn_wind(self, sol: Solution) -> None:
        """The wind is shared by every sound in the region: the regional wind is the
        median (per component) of the last ``wind_history`` estimates from well-heard
        fits, so shots heard by few sensors use it. Every good fit counts, also one the
        later checks reject (most are real sounds: fireworks, shots heard by too few
        sensors yet); the median keeps a chance alignment's odd wind out."""
        if sol.wind_estimated and sol.n_used >= self.cfg.wind_min_sensors:
            k = sol.ndim + 1
            # (Per component: sd = sqrt(max(var, 1e-6)) < 3 m/s; NaN fails.)
            if (math.sqrt(max(sol.cov[k, k], 1e-6)) < 3.0 and math.sqrt(max(sol.cov[k + 1, k + 1], 1e-6)) < 3.0
                    and math.hypot(*sol.wind_m_per_s) < 25.0):
                winds, (we, wn) = self._winds, self._winds_sorted   # (the same, kept sorted per component)
                if len(winds) == winds.maxlen:
                    old = winds[0]
                    del we[bisect.bisect_left(we, old[0])], wn[bisect.bisect_left(wn, old[1])]
                winds.append(sol.wind_m_per_s)
                bisect.insort(we, sol.wind_m_per_s[0])
                bisect.insort(wn, sol.wind_m_per_s[1])
                self.wind = np.array([_sorted_median(we), _sorted_median(wn)])
                self.wind_known = True

    def _make_event(self, sol: Solution, used: list[Detection], t0_ns: int, aerial: bool,
                    event_id: str, version: int = 1, incident_id: str | None = None) -> Event:
        """The event for a fit that is published (a new shot, ``version`` 1, or a new
        version), in its incident (found for a new shot)."""
        if incident_id is None:
            incident_id = self._incident_for(event_id, t0_ns, sol.x_m, sol.y_m)
        lat, lon, alt = self.layout.frame.point_to_geodetic(sol.x_m, sol.y_m, sol.z_m)
        major, minor, az = sol.ellipse95()
        # (np.mean's own sum, pairwise, without its call overhead on a short list.)
        pg = kernels.pairwise_sum(np.array([d.p_gunshot for d in used]), 0, len(used)) / len(used)
        label = "gunshot" if pg >= 0.5 else _majority_label(used)
        if aerial:
            # Guns are fired from the ground; a source tens of metres up is a firework.
            label, pg = "aerial", min(pg, 0.01)
        conf = pg if label == "gunshot" else 1.0 - pg
        return Event(
            event_id=event_id, t_ns=t0_ns, lat=round(float(lat), 8), lon=round(float(lon), 8),
            alt_m=round(float(alt), 2), ellipse95_m=Ellipse(round(major, 2), round(minor, 2), round(az, 1)),
            sensor_ids=tuple(sorted(d.sensor_id for d in used)),
            residual_rms_ms=round(sol.residual_rms_s * 1e3, 4), label=label, confidence=round(conf, 4),
            incident_id=incident_id, detections=tuple(sorted(d.key for d in used)),
            x_m=round(sol.x_m, 3), y_m=round(sol.y_m, 3), t_sigma_ms=round(math.sqrt(sol.cov[sol.ndim, sol.ndim]) * 1e3, 4),
            version=version, test=self.cfg.test_mode)

    def _max_rms(self, sig_ms: float) -> float:
        """The residual RMS (s) a published solution must not exceed: ``max_rms_s``, or
        2.5 times the RMS of the stated sigmas (``sig_ms``, their mean square, s^2: a
        loose survey makes every residual larger)."""
        return max(self.cfg.max_rms_s, 2.5 * math.sqrt(sig_ms))

    def _aerial(self, pos, t, sig, sol2: Solution | None, x0) -> Solution | None:
        """A 3-D solution if the shot clearly came from the air (an aerial firework):
        height above ground > ``aerial_min_height_m`` by 3 sigma, and the 3-D model
        fits significantly better than the 2-D one (or the 2-D one failed)."""
        start = [x0[0], x0[1], self.z_src + 100.0, x0[2]]
        if sol2 is not None:
            start = [sol2.x_m, sol2.y_m, self.z_src + 100.0, sol2.t0_s]
        # An unmodelled wind of a few m/s moves a source in the air by tens of metres
        # (mostly in height, the worst-resolved coordinate): estimate it when possible.
        if self.cfg.estimate_wind and len(t) > self.cfg.wind_min_sensors:
            sol3 = locate_wind_robust(pos, t, sig, c_m_per_s=self.c, z_src_m=self.z_src, x0=start, ndim=3,
                                      wind_m_per_s=self.wind, wind_sigma_m_per_s=self._wind_sd(),
                                      c_sigma_m_per_s=self.c_sd,
                                      min_wind_used=self.cfg.wind_min_sensors + 1)
        else:
            sol3 = locate(pos, t, sig, c_m_per_s=self.c, z_src_m=self.z_src, x0=start, ndim=3,
                          wind_m_per_s=self.wind, wind_sigma_m_per_s=self._wind_sd(), c_sigma_m_per_s=self.c_sd)
        if sol3 is None or sol3.dof < 1:
            return None
        h = sol3.z_m - self.z_src
        if h < self.cfg.aerial_min_height_m or h < 3.0 * math.sqrt(max(sol3.cov[2, 2], 0.0)):
            return None
        if sol2 is not None:
            # F-test on the common detections: do the extra unknowns (height, and the
            # wind if only the 3-D fit has it) pay off? Also when the 2-D fit is poor: a
            # ground shot with a late arrival or two fits badly in 2-D, and a free height
            # absorbs them (with few sensors that alone made ground shots "aerial").
            common = sol2.used & sol3.used
            c2 = float(np.sum((sol2.residuals_s[common] / sig[common]) ** 2))
            if not np.array_equal(common, sol2.used):
                # The 2-D fit refitted without the detections the 3-D one dropped (a
                # 2-D fit pulled by late arrivals would make any 3-D fit look better).
                ref = locate(pos[common], t[common], sig[common], c_m_per_s=self.c, z_src_m=self.z_src,
                             x0=[sol2.x_m, sol2.y_m, sol2.t0_s], wind_m_per_s=sol2.wind_m_per_s,
                             estimate_wind=sol2.wind_estimated, outlier_sigma=np.inf, late_sigma=np.inf)
                if ref is not None:
                    c2 = min(c2, float(np.sum((ref.residuals_s / sig[common]) ** 2)))
            # A wrong speed of sound also leaves a 2-D fit poor, and a free height absorbs
            # it (before the speed was learned, a summer afternoon's first gunshot went
            # "aerial"): the 2-D fit may take the speed within its uncertainty, the chi^2
            # a Gauss-Newton step with that prior takes off (kernels.c_offset).
            par2 = np.array([sol2.x_m, sol2.y_m, sol2.t0_s] + (list(sol2.wind_m_per_s) if sol2.wind_estimated else []))
            dc, info = kernels.c_offset(np.ascontiguousarray(pos[:, 0]), np.ascontiguousarray(pos[:, 1]),
                                        np.ascontiguousarray(pos[:, 2]), sig, common, par2, 2, float(self.z_src),
                                        float(self.c), sol2.wind_estimated, sol2.residuals_s)
            if info > 0 and self.c_sd > 0:
                c2 = max(0.0, c2 - (dc * info) ** 2 / (info + 1.0 / self.c_sd**2))
            c3 = float(np.sum((sol3.residuals_s[common] / sig[common]) ** 2))
            p2 = sol2.ndim + 1 + (2 if sol2.wind_estimated else 0)
            p3 = sol3.ndim + 1 + (2 if sol3.wind_estimated else 0)
            extra = max(1, p3 - p2)
            dof = int(common.sum()) - p3
            if dof < 1 or c3 <= 0 or (c2 - c3) / extra / (c3 / dof) < f_quantile(0.999, extra, dof):
                return None
        return sol3

    def _incident_for(self, event_id: str, t0_ns: int, x: float, y: float) -> str:
        return self.incidents.assign(event_id, t0_ns, x, y)

    def _expire(self, now_ns: int) -> None:
        if now_ns == NOW_INFINITE:
            horizon = None
            n_old = len(self.pending)
        else:
            horizon = now_ns - int((self.max_travel_s + 2 * self.cfg.latency_slack_s) * NS_PER_S)
            n_old = bisect.bisect_left(self.pending, horizon, key=_T)
        kept = None                 # (made when the first goes: most steps expire none)
        n_gone = 0
        for i, d in enumerate(itertools.islice(self.pending, n_old)):
            # Old by its own time AND waiting long enough since it arrived: a backlog
            # delivered late (after a restart or a partition) gets its full chance.
            if horizon is None or self._fed_at.get(d.key, 0) < horizon:
                self.stats.unassociated += 1
                self._fed_at.pop(d.key, None)
                if kept is None:
                    kept = np.ones(len(self.pending), dtype=np.bool_)
                kept[i] = False
                n_gone += 1
        excess = len(self.pending) - n_gone - self.cfg.max_pending
        if excess > 0:
            # The oldest beyond max_pending go too.
            self.stats.unassociated += excess
            if kept is None:
                kept = np.ones(len(self.pending), dtype=np.bool_)
            kept[_where(kept)[:excess]] = False
        keep = self._parr.filtered(self.pending, kept) if kept is not None else self.pending
        if horizon is not None:
            # Sensor histories serve the silent-neighbour check and the chance test (rates
            # over 10 s either side) of shots whose detections are still pending, a
            # backlog's included: older times can go.
            oldest = min(horizon, keep[0].t_ns) if keep else horizon
            old = oldest - max(self.shot_span_ns, 10 * NS_PER_S)
            self._seen_from = max(self._seen_from, old)
            # (Cut once a second's worth is older: every sensor's lists, each step, were
            # a twentieth of a fireworks night's housekeeping. What is older than
            # ``_seen_from`` counts in no rate, and the silent-neighbour check looks
            # around a pending shot's arrivals, at least 10 s later.)
            if old > self._hist_oldest + NS_PER_S:
                for sid, h in self.history.items():
                    n = bisect.bisect_left(h, old)
                    if n:
                        for t in h[:n]:
                            self._snr.pop((sid, t), None)
                        del h[:n]
                for h in self.gun_history.values():
                    del h[:bisect.bisect_left(h, old)]
                self._hist_oldest = min((h[0] for h in self.history.values() if h), default=NOW_INFINITE)
                self._cut_flat_history(old)
        self.pending = keep
        # Keys older than the duplicate window are forgotten (a night's keys would grow
        # without bound: 2,400 detections/s is 8 million an hour).
        cut = self._seen_to - int(self.cfg.dedup_window_s * NS_PER_S)
        while self._seen_order and self._seen_order[0][0] < cut:
            self.seen.discard(self._seen_order.popleft()[1])
        if len(self._fed_at) + len(self._memo) + len(self._failed) > 4 * len(keep) + 100:
            # What detections no longer pending left behind (taken by shots, expired).
            live = {d.key for d in keep}
            for book in (self._fed_at, self._memo, self._counting, self._failed):
                for key in [key for key in book if key not in live]:
                    del book[key]

    def flush(self, budget_s: float | None = None) -> list[Event]:
        """End of stream: search everything (for at most ``budget_s`` of compute, if
        given), then close all events."""
        out = self.step(NOW_INFINITE, budget_s=budget_s)
        self.recent += self.open
        self.open = []
        self._open_closed()
        self._recent_tab.invalidate()
        return out


def _majority_label(dets: list[Detection]) -> str:
    counts: dict[str, float] = {}
    for d in dets:
        counts[d.label] = counts.get(d.label, 0.0) + d.score
    return max(counts, key=counts.get) if counts else "impulse"


def locate_stream(layout: SensorLayout, dets: list[Detection], cfg: AssocConfig = AssocConfig(),
                  step_ns: int = 100_000_000, on_step=None, times_out: dict | None = None) -> list[Event]:
    """Batch: feed detections in time order and return the final version of each event.

    Runs the live code path, replaying time: each detection is fed at its own time (plus
    the latency allowance), as the service would see it. ``on_step(t_ns)``, if given, is
    called after each step (benchmarks time parts of a stream with it); ``times_out``, if
    given, receives the compute time (s) by part of the step (:attr:`Associator.time_s`)."""
    a = Associator(layout, cfg)
    if times_out is not None:
        a.time_s = times_out
        times_out.update(dict.fromkeys(STEP_PARTS, 0.0))
    latest: dict[str, Event] = {}
    last_step = None
    for d in sorted(dets, key=lambda d: d.t_ns):
        if last_step is None or d.t_ns - last_step >= step_ns:
            for ev in a.step(d.t_ns):
                latest[ev.event_id] = ev
            last_step = d.t_ns
            if on_step is not None:
                on_step(d.t_ns)
        a.feed(d)
    for ev in a.flush():
        latest[ev.event_id] = ev
    return sorted(latest.values(), key=lambda e: e.t_ns)
