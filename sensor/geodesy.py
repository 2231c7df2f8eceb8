"""WGS84 geodetic <-> ECEF <-> local East-North-Up (ENU), exact (no flat-earth shortcut).

Angles in degrees, lengths in metres. Shared by the simulator, the locator and calibration;
it lives in the base package (``sensor``) because ``sensor`` never imports ``locator``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

WGS84_A_M = 6378137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)
WGS84_B_M = WGS84_A_M * (1.0 - WGS84_F)
WGS84_EP2 = (WGS84_A_M**2 - WGS84_B_M**2) / WGS84_B_M**2


def geodetic_to_ecef(lat_deg, lon_deg, alt_m):
    """Geodetic latitude, longitude (deg) and ellipsoidal height (m) to ECEF x, y, z (m)."""
    lat = np.radians(np.asarray(lat_deg, dtype=np.float64))
    lon = np.radians(np.asarray(lon_deg, dtype=np.float64))
    h = np.asarray(alt_m, dtype=np.float64)
    sl, cl = np.sin(lat), np.cos(lat)
    n = WGS84_A_M / np.sqrt(1.0 - WGS84_E2 * sl * sl)
    x = (n + h) * cl * np.cos(lon)
    y = (n + h) * cl * np.sin(lon)
    z = (n * (1.0 - WGS84_E2) + h) * sl
    return x, y, z


def ecef_to_geodetic(x, y, z):
    """ECEF (m) to geodetic (deg, deg, m); Bowring's method with two refinements (sub-mm)."""
    return _bowring(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
                    np.asarray(z, dtype=np.float64), np.sin, np.cos, np.sqrt, np.degrees)


def _bowring(x, y, z, sin, cos, sqrt, degrees):
    """:func:`ecef_to_geodetic`'s arithmetic, on arrays (numpy's functions) or on one
    point (Python floats, ``math``'s functions: the same values to the last bit, as
    ``test_one_point_is_the_arrays_arithmetic`` checks; ``atan2`` and ``hypot`` stay
    numpy's, whose last bits differ from ``math``'s). Powers are products: numpy's ``**``
    on arrays is its own ``pow`` (on AVX-512 machines a vectorised one, whose last bit
    differs from the C library's in ~3% of cubes), a float's is the C library's."""
    lon = np.arctan2(y, x)
    p = np.hypot(x, y)
    theta = np.arctan2(z * WGS84_A_M, p * WGS84_B_M)
    st, ct = sin(theta), cos(theta)
    lat = np.arctan2(z + WGS84_EP2 * WGS84_B_M * (st * st * st),
                     p - WGS84_E2 * WGS84_A_M * (ct * ct * ct))
    for _ in range(2):
        sl = sin(lat)
        n = WGS84_A_M / sqrt(1.0 - WGS84_E2 * (sl * sl))
        h = p / cos(lat) - n
        lat = np.arctan2(z, p * (1.0 - WGS84_E2 * n / (n + h)))
    sl = sin(lat)
    n = WGS84_A_M / sqrt(1.0 - WGS84_E2 * (sl * sl))
    h = p / cos(lat) - n
    return degrees(lat), degrees(lon), h


@dataclass(frozen=True)
class LocalFrame:
    """A local tangent plane: ENU metres about an origin (lat0, lon0, alt0)."""

    lat0_deg: float
    lon0_deg: float
    alt0_m: float = 0.0

    # (The rotation and the origin's ECEF position are computed once per frame: the
    # locator converts every event it publishes, thousands a minute on a crowded night.)
    @functools.cached_property
    def _rotation(self) -> np.ndarray:
        """ECEF offsets to ENU (rows: east, north, up), read-only."""
        la, lo = np.radians(self.lat0_deg), np.radians(self.lon0_deg)
        sla, cla, slo, clo = np.sin(la), np.cos(la), np.sin(lo), np.cos(lo)
        rot = np.array([[-slo, clo, 0.0],
                        [-sla * clo, -sla * slo, cla],
                        [cla * clo, cla * slo, sla]])
        rot.setflags(write=False)
        return rot

    @functools.cached_property
    def _origin_ecef(self) -> tuple:
        return geodetic_to_ecef(self.lat0_deg, self.lon0_deg, self.alt0_m)

    def to_enu(self, lat_deg, lon_deg, alt_m):
        """Geodetic to (east, north, up) metres in this frame."""
        x, y, z = geodetic_to_ecef(lat_deg, lon_deg, alt_m)
        x0, y0, z0 = self._origin_ecef
        d = np.stack([np.asarray(x - x0), np.asarray(y - y0), np.asarray(z - z0)])
        e, n, u = np.tensordot(self._rotation, d, axes=1)
        return e, n, u

    @functools.cached_property
    def _to_ecef_rows(self) -> tuple:
        """The rotation from ENU back to ECEF offsets (rows: x, y, z), as Python floats."""
        return tuple(tuple(float(v) for v in row) for row in self._rotation.T)

    def _enu_to_ecef(self, e, n, u):
        """ENU (m; arrays or floats) to ECEF (m): each coordinate a sum of three
        products in a fixed order, the same bits for one point and for arrays. (A matrix
        product is the BLAS library's, whose kernel, and so its fused multiply-adds, depends
        on the machine and on how many points: an event's latitude would depend on
        whether it was converted alone.)"""
        (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = self._to_ecef_rows
        x0, y0, z0 = self._origin_ecef
        return ((a0 * e + a1 * n + a2 * u) + x0, (b0 * e + b1 * n + b2 * u) + y0,
                (c0 * e + c1 * n + c2 * u) + z0)

    def to_geodetic(self, e_m, n_m, u_m):
        """(east, north, up) metres in this frame to geodetic (deg, deg, m)."""
        return ecef_to_geodetic(*self._enu_to_ecef(np.asarray(e_m, dtype=np.float64),
                                                   np.asarray(n_m, dtype=np.float64),
                                                   np.asarray(u_m, dtype=np.float64)))

    def point_to_geodetic(self, e_m: float, n_m: float, u_m: float) -> tuple[float, float, float]:
        """:meth:`to_geodetic` of one point, as Python floats (deg, deg, m), the same
        values to the last bit at under half the cost (the locator converts every
        event version it publishes)."""
        x, y, z = self._enu_to_ecef(float(e_m), float(n_m), float(u_m))
        lat, lon, h = _bowring(x, y, z, math.sin, math.cos, math.sqrt, math.degrees)
        return float(lat), float(lon), float(h)
