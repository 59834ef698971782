"""Spatial filter of a search: a lon/lat box, and the exact test of a tile footprint against it.

A box is `minlon,minlat,maxlon,maxlat` (GeoJSON bbox order, EPSG:4326 degrees). A box whose minlon
is greater than its maxlon crosses the antimeridian and is read as two boxes. The index keeps an
SQLite R*Tree of every item's lon/lat box (single-precision, rounded outwards: a superset); the
candidates it returns are then tested exactly, footprint polygon against box, with shapely.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from priorclip.errors import ConfigError

# The box as the API's schema states it: four decimal numbers, longitudes within +-180 and
# latitudes within +-90 (minlat <= maxlat is checked on use: 400).
_LON = r"-?(?:180(?:\.0+)?|(?:1[0-7][0-9]|[0-9]{1,2})(?:\.[0-9]+)?)"
_LAT = r"-?(?:90(?:\.0+)?|[0-8]?[0-9](?:\.[0-9]+)?)"
BBOX_PATTERN = rf"^{_LON},{_LAT},{_LON},{_LAT}$"
BBOX_HELP = ("only items whose footprint meets this lon/lat box: minlon,minlat,maxlon,maxlat in EPSG:4326 degrees "
             "(minlon > maxlon crosses the antimeridian); items without georeference are left out")


@dataclass(frozen=True)
class BBox:
    minlon: float
    minlat: float
    maxlon: float
    maxlat: float

    @classmethod
    def parse(cls, value: "str | list | tuple | BBox | None") -> "BBox | None":
        """'minlon,minlat,maxlon,maxlat' (or a 4-sequence) -> BBox; None stays None."""
        if value is None or isinstance(value, BBox):
            return value
        parts = value.split(",") if isinstance(value, str) else list(value)
        try:
            nums = [float(p) for p in parts]
        except (TypeError, ValueError):
            raise ConfigError(f"bbox {value!r}: expected four numbers minlon,minlat,maxlon,maxlat") from None
        if len(nums) != 4 or any(n != n or n in (float("inf"), float("-inf")) for n in nums):
            raise ConfigError(f"bbox {value!r}: expected four finite numbers minlon,minlat,maxlon,maxlat")
        box = cls(*nums)
        if not (-180 <= box.minlon <= 180 and -180 <= box.maxlon <= 180):
            raise ConfigError(f"bbox {value!r}: longitudes must be within -180..180")
        if not (-90 <= box.minlat <= box.maxlat <= 90):
            raise ConfigError(f"bbox {value!r}: latitudes must be within -90..90 with minlat <= maxlat")
        return box

    def parts(self) -> list[tuple[float, float, float, float]]:
        """The box as (minlon, minlat, maxlon, maxlat) pieces that do not cross the antimeridian."""
        if self.minlon <= self.maxlon:
            return [(self.minlon, self.minlat, self.maxlon, self.maxlat)]
        return [(self.minlon, self.minlat, 180.0, self.maxlat), (-180.0, self.minlat, self.maxlon, self.maxlat)]

    def as_list(self) -> list[float]:
        return [self.minlon, self.minlat, self.maxlon, self.maxlat]


def union_bounds(boxes) -> list[float] | None:
    """The lon/lat box (west, south, east, north) covering `boxes` (each in the same order); None
    for none."""
    import numpy as np

    boxes = np.asarray(list(boxes), dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return None
    return [*map(float, boxes[:, :2].min(0)), *map(float, boxes[:, 2:].max(0))]


def _parsed(value):
    return json.loads(value) if isinstance(value, str) else value


def footprints_intersecting(box: BBox, rows: list[tuple]) -> list[int]:
    """Ids of the candidate rows (id, footprint, bounds) whose footprint polygon meets the box
    (touching counts); footprint and bounds as JSON text (SQLite) or sequences. An item with bounds
    but no footprint is tested by its bounds. Bounds may be larger than the footprint's own box
    (the R*Tree's outward rounding), never smaller."""
    import numpy as np
    import shapely

    if not rows:
        return []
    # a footprint lies within its bounds: bounds inside the box meet it without a polygon test
    bounds = np.array([_parsed(b) for _, _, b in rows], dtype=np.float64).reshape(len(rows), 4)
    hit = np.zeros(len(rows), dtype=bool)
    for w, s, e, n in box.parts():
        hit |= (bounds[:, 0] >= w) & (bounds[:, 2] <= e) & (bounds[:, 1] >= s) & (bounds[:, 3] <= n)
    edge = np.flatnonzero(~hit)
    if len(edge):
        shapes = np.array([shapely.Polygon(_parsed(rows[k][1])) if rows[k][1] else shapely.box(*bounds[k])
                           for k in edge], dtype=object)
        for part in box.parts():
            hit[edge] |= shapely.intersects(shapes, shapely.box(*part))
    return [rows[k][0] for k in np.nonzero(hit)[0]]
