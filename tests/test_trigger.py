"""Trigger and picker: kernels against slow twins, and pick accuracy."""

import math

import numpy as np

from shotnet.sensor.trigger import _sta_lta_kernel, aic_curve, pick_sigma_ns
from shotnet.sensor.node import RingBuffer, detect_all, NodeConfig, NodeCore
from shotnet.sensor.clock import LinearSampleClock
from shotnet.sensor.synth import friedlander

from .conftest import T0


def sta_lta_py(x, sta_a, mta_a, lta_a, freeze_ratio, max_freeze, sta, mta, lta, frozen=0):
    out, jumps = [], []
    for v in x:
        e = v * v
        sta += sta_a * (e - sta)
        r = sta / lta if lta > 0 else 0.0
        out.append(r)
        jumps.append(sta / mta if mta > 0 else 0.0)
        mta += mta_a * (e - mta)
        if r > freeze_ratio and frozen < max_freeze:
            frozen += 1
        else:
            lta += lta_a * (e - lta)
            if r <= freeze_ratio:
                frozen = 0
    return np.array(out), np.array(jumps), [sta, mta, lta, frozen]


def aic_py(x):
    n = len(x)
    out = np.full(n, np.inf)
    for k in range(2, n - 2):
        v1, v2 = np.var(x[:k]), np.var(x[k:])
        out[k] = k * math.log(max(v1, 1e-30)) + (n - k - 1) * math.log(max(v2, 1e-30))
    return out


def test_sta_lta_kernel_matches_twin(rng):
    x = rng.standard_normal(3000)
    x[1000:1100] *= 30  # an impulse: the LTA freezes
    state = np.array([0.1, 0.15, 0.2, 0.0])
    out, jump = np.empty_like(x), np.empty_like(x)
    _sta_lta_kernel(x, 0.05, 0.01, 0.001, 2.0, 50.0, state, out, jump)
    ref, ref_jump, ref_state = sta_lta_py(x, 0.05, 0.01, 0.001, 2.0, 50.0, 0.1, 0.15, 0.2)
    assert np.allclose(out, ref) and np.allclose(jump, ref_jump) and np.allclose(state, ref_state)


def test_every_round_of_a_burst_in_reverberation_triggers(rng):
    from shotnet.sensor.trigger import Trigger

    fs = 16000
    x = rng.standard_normal(fs * 4) * 1e-3
    for k in range(8):  # 12 rounds/s, each with a 0.4 s reverberant tail
        j = int((1.5 + k / 12) * fs)
        p = friedlander(fs, 0.3 * rng.uniform(0.6, 1.0), 1e-3, length_s=0.05)
        x[j:j + len(p)] += p
        tail = rng.standard_normal(int(0.4 * fs)) * 0.02 * np.exp(-np.arange(int(0.4 * fs)) / (0.1 * fs))
        x[j + 80:j + 80 + len(tail)] += tail
    hits, _ = Trigger(fs).process(x)
    for k in range(8):
        assert any(abs(h - (1.5 + k / 12) * fs) < 0.005 * fs for h in hits), k


def test_a_quiet_shot_after_a_loud_one_still_triggers(rng):
    from shotnet.sensor.trigger import Trigger

    fs = 16000
    x = rng.standard_normal(fs * 4) * 1e-3
    loud = friedlander(fs, 0.9, 1e-3, length_s=0.05)
    quiet = friedlander(fs, 0.02, 1e-3, length_s=0.05)
    x[int(1.5 * fs):int(1.5 * fs) + len(loud)] += loud
    # the loud shot's reverberation: half a second of decaying noise
    tail = rng.standard_normal(fs // 2) * 0.05 * np.exp(-np.arange(fs // 2) / (0.15 * fs))
    x[int(1.55 * fs):int(1.55 * fs) + len(tail)] += tail
    x[int(2.3 * fs):int(2.3 * fs) + len(quiet)] += quiet
    hits, _ = Trigger(fs).process(x)
    assert any(abs(h - 2.3 * fs) < 0.01 * fs for h in hits), [h / fs for h in hits]


def test_aic_kernel_matches_twin(rng):
    x = np.r_[rng.standard_normal(300) * 0.1, rng.standard_normal(200)]
    a, b = aic_curve(x), aic_py(x)
    ok = np.isfinite(b)
    assert np.allclose(a[ok], b[ok], rtol=1e-8, atol=1e-6)
    assert abs(int(np.argmin(a)) - 300) <= 2


def test_pick_is_sub_millisecond_on_a_noisy_impulse(rng):
    fs = 16000
    errs = []
    for k in range(20):
        n = fs * 3
        x = rng.standard_normal(n) * 1e-3
        onset = 1.5 + k * 0.001 + rng.uniform(0, 1 / fs)
        j = int(onset * fs)
        p = friedlander(fs, 0.1, 0.8e-3, length_s=0.05)
        x[j:j + len(p)] += p
        dets = detect_all(x.astype(np.float32), fs, "S1", T0)
        assert len(dets) >= 1
        errs.append((dets[0].t_ns - T0) / 1e9 - j / fs)
    errs = np.abs(errs)
    assert np.median(errs) < 1.5 / fs and errs.max() < 0.5e-3


def test_digital_silence_before_an_impulse_is_pickable():
    fs = 16000
    x = np.zeros(fs * 3, dtype=np.float32)
    p = friedlander(fs, 0.3, 0.8e-3, length_s=0.05)
    x[int(1.5 * fs):int(1.5 * fs) + len(p)] += p
    dets = detect_all(x, fs, "S1", T0)
    assert len(dets) == 1 and abs((dets[0].t_ns - T0) / 1e9 - 1.5) < 2 / fs


def test_sigma_grows_as_snr_falls():
    assert pick_sigma_ns(40, 16000) < pick_sigma_ns(25, 16000) < pick_sigma_ns(15, 16000)
    assert 80_000 < pick_sigma_ns(25, 16000) < 120_000


def test_ring_buffer_addresses_absolute_samples():
    rb = RingBuffer(10)
    rb.write(np.arange(7))
    rb.write(np.arange(7, 15))
    assert rb.start == 5 and rb.end == 15
    assert list(rb.read(6, 9)) == [6, 7, 8]
    assert rb.read(2, 6) is None


def test_nan_audio_is_counted_and_silenced(rng):
    fs = 16000
    core = NodeCore(NodeConfig("S1", fs), LinearSampleClock(T0, fs))
    x = (rng.standard_normal(fs) * 1e-3).astype(np.float32)
    x[100:200] = np.nan
    out = core.feed(x)
    assert core.stats.nonfinite_blocks == 1 and out == []
    assert np.all(np.isfinite(core.raw.read(0, fs)))


def test_clipping_is_counted():
    fs = 16000
    core = NodeCore(NodeConfig("S1", fs), LinearSampleClock(T0, fs))
    x = np.zeros(fs, dtype=np.float32)
    x[5000:5010] = 1.0
    core.feed(x)
    assert core.stats.clipped_samples == 10


def test_wrong_sample_rate_is_a_clear_error():
    import pytest

    from shotnet.sensor.node import run_node
    from shotnet.sensor.sources import ArraySource

    core = NodeCore(NodeConfig("S1", 16000), LinearSampleClock(T0, 16000))
    with pytest.raises(ValueError, match="48000 Hz but the node is configured for 16000 Hz"):
        run_node(core, ArraySource(np.zeros(48000), 48000), lambda d: None)
