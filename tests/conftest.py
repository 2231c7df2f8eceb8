"""Shared fixtures: synthetic scenes come from one factory (sensor.scene)."""

import dataclasses

import numpy as np
import pytest

from shotnet.sensor.contract import NS_PER_S
from shotnet.sensor.scene import Scene, Source, default_layout, default_scene

T0 = 1_800_000_000 * NS_PER_S


@pytest.fixture(scope="session")
def city_scene():
    """The demo's city, 24 s long."""
    return default_scene(T0, seed=11, duration_s=24.0)


@pytest.fixture(scope="session")
def city_detections(city_scene):
    from shotnet.sensor.node import detect_all
    from shotnet.sensor.scene import render_sensor

    dets = []
    for i, sid in enumerate(city_scene.layout.ids):
        dets += detect_all(render_sensor(city_scene, i), city_scene.fs_hz, sid, city_scene.t_start_ns)
    return dets


def single_source_scene(kind="handgun", e=100.0, n=-50.0, quiet=True, **kw):
    layout = default_layout(n_side=3, spacing_m=300.0, drop=0)
    src = Source("s1", kind, T0 + NS_PER_S, e, n, 1.5)
    base = dict(layout=layout, sources=(src,), t_start_ns=T0, duration_s=4.0, seed=3,
                noise_db_spl=tuple([20.0 if quiet else 55.0] * len(layout)), echoes=False)
    base.update(kw)
    return Scene(**base)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


__all__ = ["T0", "single_source_scene", "dataclasses"]
