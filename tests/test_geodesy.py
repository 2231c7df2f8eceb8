import numpy as np

from shotnet.sensor.geodesy import LocalFrame, ecef_to_geodetic, geodetic_to_ecef
from shotnet.sensor.layout import parse_layout
from shotnet.sensor.contract import ContractError
import pytest


def test_ecef_known_point():
    # equator, prime meridian, on the ellipsoid: x = a
    x, y, z = geodetic_to_ecef(0.0, 0.0, 0.0)
    assert abs(x - 6378137.0) < 1e-6 and abs(y) < 1e-6 and abs(z) < 1e-6
    # north pole: z = b
    _, _, z = geodetic_to_ecef(90.0, 0.0, 0.0)
    assert abs(z - 6356752.314245) < 1e-3


def test_round_trips_are_sub_millimetre(rng):
    lat = rng.uniform(-80, 80, 50)
    lon = rng.uniform(-180, 180, 50)
    h = rng.uniform(-100, 3000, 50)
    la, lo, hh = ecef_to_geodetic(*geodetic_to_ecef(lat, lon, h))
    assert np.max(np.abs(la - lat)) < 1e-9 and np.max(np.abs(lo - lon)) < 1e-9 and np.max(np.abs(hh - h)) < 1e-3
    f = LocalFrame(41.85, -87.68, 180.0)
    e, n, u = rng.uniform(-3000, 3000, (3, 50))
    e2, n2, u2 = f.to_enu(*f.to_geodetic(e, n, u))
    assert np.max(np.abs(np.array([e2 - e, n2 - n, u2 - u]))) < 1e-4


def test_enu_axes_point_the_right_way():
    f = LocalFrame(41.85, -87.68, 0.0)
    e, n, u = f.to_enu(41.86, -87.68, 0.0)  # 0.01 deg north ~ 1.11 km
    assert abs(e) < 0.01 and 1100 < n < 1120 and u < 0
    e, n, u = f.to_enu(41.85, -87.67, 0.0)  # east
    assert 820 < e < 840 and abs(n) < 1.0


def test_layout_validation_messages():
    with pytest.raises(ContractError, match="FeatureCollection"):
        parse_layout({"type": "Feature"})
    bad = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [32.8, -96.8, 10]}, "properties": {"id": "A"}}]}
    with pytest.raises(ContractError, match="not \\[lon, lat\\]"):
        parse_layout(bad)
    dup = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [-87.6, 41.8, 10]}, "properties": {"id": "A"}}] * 2}
    with pytest.raises(ContractError, match="duplicate sensor id"):
        parse_layout(dup)


def test_one_point_is_the_arrays_arithmetic(rng):
    """point_to_geodetic (one point, Python floats and math's functions) gives the
    same values to the last bit as to_geodetic on arrays and on 0-d arrays: a
    published event's latitude must not depend on which path converted it."""
    for lat0, lon0, alt0 in [(41.85, -87.68, 180.0), (-33.9, 151.2, 10.0), (64.1, -21.9, 20.0), (0.5, 179.9, 0.0)]:
        f = LocalFrame(lat0, lon0, alt0)
        pts = rng.uniform([-20000, -20000, -50], [20000, 20000, 500], (3000, 3))
        la, lo, h = f.to_geodetic(pts[:, 0], pts[:, 1], pts[:, 2])
        for k, (e, n, u) in enumerate(pts.tolist()):
            one = f.point_to_geodetic(e, n, u)
            assert all(type(v) is float for v in one)
            assert one == (la[k], lo[k], h[k]) == tuple(map(float, f.to_geodetic(e, n, u)))
