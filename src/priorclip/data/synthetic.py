"""Synthetic aerial scenes with faithful captions, for `priorclip demo` and for tests.

No real dataset may ship with the project and nothing can be downloaded, so the demo draws its
own top-down, remote-sensing-style scenes with numpy + PIL. Every caption is written from the
same random parameters that drew the image (counts, colours, layout, orientation), so text and
image agree and retrieval on this data is learnable but not trivial: within a class the layout,
counts, colours, rotation, lighting and noise all vary.

The output uses the layout of the real benchmarks (Karpathy ``dataset.json`` plus a UCM-style
``labels.csv``), so every loader and evaluator in the project can read it unchanged.

Same seed, same image size and same library versions give byte-identical files: every image has
its own generator seeded from ``(seed, class, index)``, so generating a subset of the classes
or fewer images per class reproduces the same images for the ones kept.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from priorclip.errors import ConfigError, DataError

__all__ = [
    "SCENE_CLASSES",
    "COUNT_NOUNS",
    "NUMBER_WORDS",
    "render_scene",
    "generate_synthetic_dataset",
    "tokenize_caption",
]

#: Scene classes, in the order used to seed the generators (never reorder: it changes images).
SCENE_CLASSES: list[str] = [
    "airport",
    "parkinglot",
    "farmland",
    "river",
    "beach",
    "residential",
    "storagetanks",
    "sportscourts",
    "harbor",
    "desert",
]

NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
]

#: Caption word -> key of ``params["counts"]``: lets tests (and users) check that every number a
#: caption states is the number of objects actually drawn.
COUNT_NOUNS: dict[str, str] = {
    "plane": "plane", "planes": "plane", "airplane": "plane", "airplanes": "plane",
    "aircraft": "plane",
    "car": "car", "cars": "car", "vehicle": "car", "vehicles": "car",
    "row": "row", "rows": "row",
    "strip": "strip", "strips": "strip",
    "field": "field", "fields": "field", "plot": "field", "plots": "field",
    "bridge": "bridge", "bridges": "bridge",
    "umbrella": "umbrella", "umbrellas": "umbrella",
    "house": "house", "houses": "house", "building": "house", "buildings": "house",
    "street": "street", "streets": "street", "road": "street", "roads": "street",
    "tank": "tank", "tanks": "tank",
    "court": "court", "courts": "court",
    "boat": "boat", "boats": "boat", "ship": "boat", "ships": "boat",
    "pier": "pier", "piers": "pier",
    "track": "track", "tracks": "track",
}

_SUPERSAMPLE = 2  # draw at 2x and box-downsample: anti-aliased edges at no extra code
_MARGIN = 1.45  # drawing canvas / visible crop, so any rotation still covers the crop

# Colour names used in captions -> base RGB. Hues are kept far apart so that the name stays
# right after lighting jitter and noise.
_RGB: dict[str, tuple[int, int, int]] = {
    "white": (236, 236, 232),
    "light grey": (178, 178, 176),
    "grey": (128, 128, 130),
    "dark grey": (78, 78, 82),
    "black": (32, 32, 36),
    "red": (196, 42, 36),
    "blue": (40, 78, 186),
    "yellow": (232, 200, 44),
    "orange": (226, 124, 36),
    "green": (64, 148, 58),
    "dark green": (34, 86, 38),
    "brown": (128, 84, 50),
    "turquoise": (40, 150, 160),
    "sea blue": (28, 72, 128),
}


# --------------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------------
def _jit(rng: np.random.Generator, rgb: Sequence[int], amount: int = 10) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + d, 0, 255))


def _shade(rgb: Sequence[int], f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * f)))) for c in rgb)


def _col(rng: np.random.Generator, name: str, amount: int = 10) -> tuple[int, int, int]:
    return _jit(rng, _RGB[name], amount)


class _Canvas:
    """A square drawing in *local* coordinates, later rotated by ``angle`` and cropped.

    Local units: the visible crop is [-1, 1] x [-1, 1] when the angle is 0, x to the right and
    y down. The canvas is ``_MARGIN`` times larger so that any rotation still fills the crop.
    Scene code draws in the local frame (e.g. a runway always along x) and asks the canvas how
    things look after rotation (``direction``, ``side``) and whether an object is fully inside
    the crop (``visible``): counted objects are drawn only when fully visible, so the counts in
    captions are the counts in the picture.
    """

    def __init__(self, image_size: int, angle_deg: float, background: Sequence[int]):
        self.image_size = image_size
        self.C = image_size * _SUPERSAMPLE
        D = int(math.ceil(self.C * _MARGIN))
        self.D = D + (D % 2)
        self.scale = self.C / 2.0
        self.angle = float(angle_deg)
        th = math.radians(self.angle)
        self.cos, self.sin = math.cos(th), math.sin(th)
        self.img = Image.new("RGB", (self.D, self.D), tuple(background))
        self.draw = ImageDraw.Draw(self.img)
        # sun from the upper left of the *final* image: shadows fall down-right in every image
        self.shadow = self.to_local(0.022, 0.03)

    # ---- geometry -------------------------------------------------------------------------
    def px(self, x: float, y: float) -> tuple[float, float]:
        return (self.D / 2 + x * self.scale, self.D / 2 + y * self.scale)

    def w(self, width: float) -> int:
        return max(1, int(round(width * self.scale)))

    def to_view(self, x: float, y: float) -> tuple[float, float]:
        """Local -> final-image coordinates (PIL rotates counter-clockwise, y points down)."""
        return (x * self.cos + y * self.sin, -x * self.sin + y * self.cos)

    def to_local(self, vx: float, vy: float) -> tuple[float, float]:
        return (vx * self.cos - vy * self.sin, vx * self.sin + vy * self.cos)

    def visible(self, x: float, y: float, radius: float = 0.0, margin: float = 0.04) -> bool:
        vx, vy = self.to_view(x, y)
        lim = 1.0 - margin - radius
        return abs(vx) <= lim and abs(vy) <= lim

    def direction(self, dx: float, dy: float) -> tuple[str, str]:
        """(adjective, 'runs ...' phrase) for an undirected axis given in local coordinates."""
        vx, vy = self.to_view(dx, dy)
        a = math.degrees(math.atan2(-vy, vx)) % 180.0  # 0 = horizontal, 90 = vertical, y up
        if a < 22.5 or a >= 157.5:
            return "horizontal", "from left to right"
        if 67.5 <= a < 112.5:
            return "vertical", "from top to bottom"
        if a < 67.5:
            return "diagonal", "diagonally from the lower left to the upper right"
        return "diagonal", "diagonally from the upper left to the lower right"

    def side(self, dx: float, dy: float) -> str:
        """Where a local direction points in the final image: 'top', 'lower left', ..."""
        vx, vy = self.to_view(dx, dy)
        a = math.degrees(math.atan2(-vy, vx)) % 360.0
        names = ["right", "upper right", "top", "upper left", "left", "lower left", "bottom",
                 "lower right"]
        return names[int(((a + 22.5) % 360.0) // 45.0)]

    # ---- primitives (local coordinates) ----------------------------------------------------
    def poly(self, pts: Sequence[tuple[float, float]], fill, outline=None) -> None:
        self.draw.polygon([self.px(x, y) for x, y in pts], fill=fill, outline=outline)

    def rect_pts(self, cx, cy, w, h, rot=0.0):
        c, s = math.cos(rot), math.sin(rot)
        out = []
        for ux, uy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
            out.append((cx + ux * c - uy * s, cy + ux * s + uy * c))
        return out

    def rect(self, cx, cy, w, h, fill, rot=0.0) -> None:
        self.poly(self.rect_pts(cx, cy, w, h, rot), fill)

    def box(self, x0, y0, x1, y1, fill) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)

    def circle(self, cx, cy, r, fill, outline=None, width=1) -> None:
        x0, y0 = self.px(cx - r, cy - r)
        x1, y1 = self.px(cx + r, cy + r)
        self.draw.ellipse([x0, y0, x1, y1], fill=fill, outline=outline, width=width)

    def line(self, pts, width, fill, curve=True) -> None:
        self.draw.line([self.px(x, y) for x, y in pts], fill=fill, width=self.w(width),
                       joint="curve" if curve else None)

    def shadowed(self, pts, fill, strength=0.55, ground=None) -> None:
        """A polygon with its cast shadow (offset along the sun direction)."""
        sx, sy = self.shadow
        shade = (20, 24, 22) if ground is None else _shade(ground, strength)
        self.poly([(x + sx, y + sy) for x, y in pts], shade)
        self.poly(pts, fill)

    # ---- finishing --------------------------------------------------------------------------
    def finish(self, rng: np.random.Generator, grain: float = 1.0) -> Image.Image:
        """Rotate, crop, downsample to ``image_size``, add sensor-like lighting and noise."""
        # one affine resampling straight into the crop (PIL's rotate would resample the whole
        # margin canvas): output pixel (u, v) shows local point to_local(u, v)
        C, D = self.C, self.D
        cs, sn = self.cos, self.sin
        h = C / 2.0
        m = (cs, -sn, D / 2 - h * (cs - sn), sn, cs, D / 2 - h * (sn + cs))
        img = self.img.transform((C, C), Image.Transform.AFFINE, m, resample=Image.Resampling.BILINEAR)
        if _SUPERSAMPLE > 1:
            img = img.reduce(_SUPERSAMPLE)
        a = np.asarray(img, dtype=np.float32)
        S = a.shape[0]
        # slow illumination change across the scene (thin haze, vignetting, sun angle)
        low = _upsample(rng.random((4, 4), dtype=np.float32), S)
        gain = rng.uniform(0.86, 1.12) * (1.0 + 0.14 * (low - 0.5))
        tint = 1.0 + rng.uniform(-0.025, 0.025, size=3).astype(np.float32)
        # ground texture (mid frequency) and sensor noise (per pixel)
        k = max(4, S // 5)
        mid = _upsample(rng.random((k, k), dtype=np.float32), S) - 0.5
        a = a * gain[..., None] * tint + (22.0 * grain) * mid[..., None]
        a += rng.standard_normal(size=a.shape, dtype=np.float32) * 3.0
        np.clip(a + 0.5, 0, 255, out=a)
        return Image.fromarray(a.astype(np.uint8), "RGB")


def _upsample(small: np.ndarray, size: int) -> np.ndarray:
    im = Image.fromarray(small.astype(np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# caption helpers
# --------------------------------------------------------------------------------------------
def _num(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _nn(n: int, singular: str, plural: str | None = None) -> str:
    """'one plane', 'three planes'."""
    return f"{_num(n)} {singular if n == 1 else (plural or singular + 's')}"


def _plural(n: int, singular: str, plural: str | None = None) -> str:
    return singular if n == 1 else (plural or singular + "s")


def _some(n: int, phrase: str, plural: str | None = None) -> str:
    """Number-free noun phrase: 'a white plane' / 'white planes'."""
    return f"{_article(phrase)} {phrase}" if n == 1 else (plural or phrase + "s")


def _v(n: int, singular: str, plural: str) -> str:
    return singular if n == 1 else plural


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _pick_captions(rng: np.random.Generator, counted: list[tuple[str, set[str]]],
                   other: list[str], keys: set[str], n: int = 5) -> list[str]:
    """Choose ``n`` distinct captions: count captions covering every counted key (at least two
    of them when possible), the rest from the descriptive ones, in random order."""
    chosen: list[str] = []
    order = [counted[i] for i in rng.permutation(len(counted))]
    missing = set(keys)
    for text, ks in order:
        if ks & missing:
            chosen.append(text)
            missing -= ks
    if missing:  # a template bug, not a user error
        raise AssertionError(f"no caption states the count of {sorted(missing)}")
    for text, _ in order:
        if len(chosen) >= 2:
            break
        if text not in chosen:
            chosen.append(text)
    rest = [other[i] for i in rng.permutation(len(other))]
    rest += [t for t, _ in order if t not in chosen]
    for text in rest:
        if len(chosen) >= n:
            break
        if text not in chosen:
            chosen.append(text)
    if len(chosen) < n:
        raise AssertionError("not enough distinct caption templates")
    chosen = chosen[:n]
    return [_sentence(chosen[i]) for i in rng.permutation(n)]


def _sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text[0].upper() + text[1:] + "."


def tokenize_caption(raw: str) -> list[str]:
    """Karpathy-style tokens: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", raw.lower())


def _angle(rng: np.random.Generator, bases: Sequence[float], jitter: float) -> float:
    return float(bases[int(rng.integers(len(bases)))] + rng.uniform(-jitter, jitter))


def _choice(rng: np.random.Generator, items: Sequence, p: Sequence[float] | None = None):
    if p is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(p, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def _trees(cv: _Canvas, rng: np.random.Generator, n: int, region: Callable[[np.ndarray, np.ndarray], np.ndarray],
           rmin: float, rmax: float, base: Sequence[int], extent: float = _MARGIN) -> None:
    """Scatter tree crowns (shadow + crown + lit top) where ``region(x, y)`` is true.

    Vectorised set-up and only crowns that reach the crop are drawn: forests have ~1000 trees.
    """
    xs = rng.uniform(-extent, extent, n)
    ys = rng.uniform(-extent, extent, n)
    rs = rng.uniform(rmin, rmax, n)
    fs = rng.uniform(0.75, 1.2, n)
    vx, vy = xs * cv.cos + ys * cv.sin, -xs * cv.sin + ys * cv.cos
    keep = region(xs, ys) & (np.abs(vx) < 1 + rs) & (np.abs(vy) < 1 + rs)
    sx, sy = cv.shadow
    k = cv.scale
    cx = cv.D / 2 + xs[keep] * k
    cy = cv.D / 2 + ys[keep] * k
    r = rs[keep] * k
    crown = np.clip(np.outer(fs[keep], base), 0, 255).astype(int)
    lit = np.clip(crown * 1.18, 0, 255).astype(int)
    ell = cv.draw.ellipse
    shadow = (18, 34, 18)
    for x, y, rr in zip((cx + sx * k * 0.5).tolist(), (cy + sy * k * 0.5).tolist(), r.tolist()):
        ell((x - rr, y - rr, x + rr, y + rr), fill=shadow)
    for x, y, rr, c, l in zip(cx.tolist(), cy.tolist(), r.tolist(), crown.tolist(), lit.tolist()):
        ell((x - rr, y - rr, x + rr, y + rr), fill=tuple(c))
        h, q = rr * 0.25, rr * 0.45
        ell((x - h - q, y - h - q, x - h + q, y - h + q), fill=tuple(l))


def _everywhere(x, y):
    return np.ones_like(x, dtype=bool)


# --------------------------------------------------------------------------------------------
# scene renderers: each returns (canvas, captions, params)
# --------------------------------------------------------------------------------------------
def _plane_polys(cx, cy, L, heading):
    c, s = math.cos(heading), math.sin(heading)

    def tr(pts):
        return [(cx + u * L * c - v * L * s, cy + u * L * s + v * L * c) for u, v in pts]

    body = tr([(0.5, 0), (0.44, 0.055), (0.3, 0.065), (-0.42, 0.05), (-0.5, 0.02), (-0.5, -0.02),
               (-0.42, -0.05), (0.3, -0.065), (0.44, -0.055)])
    wings = tr([(0.1, 0.05), (-0.14, 0.5), (-0.24, 0.5), (-0.12, 0.05), (-0.12, -0.05),
                (-0.24, -0.5), (-0.14, -0.5), (0.1, -0.05)])
    tail = tr([(-0.36, 0.04), (-0.47, 0.2), (-0.52, 0.2), (-0.48, 0.03), (-0.48, -0.03),
               (-0.52, -0.2), (-0.47, -0.2), (-0.36, -0.04)])
    return [wings, tail, body]


def _airport(rng, size):
    angle = _angle(rng, [0, 45, 90, 135], 6)
    grass = _jit(rng, (118, 136, 84), 12)
    cv = _Canvas(size, angle, grass)
    s = 1 if rng.random() < 0.5 else -1  # apron side in local frame
    rw_name = _choice(rng, ["grey", "dark grey"])
    rw_col = _col(rng, rw_name, 8)
    w = rng.uniform(0.2, 0.28)
    ry = -s * rng.uniform(0.15, 0.32)
    big = 2.0
    cv.box(-big, ry - w / 2, big, ry + w / 2, rw_col)
    white = _col(rng, "white", 6)
    cv.line([(-big, ry - w / 2 + 0.015), (big, ry - w / 2 + 0.015)], 0.012, white)
    cv.line([(-big, ry + w / 2 - 0.015), (big, ry + w / 2 - 0.015)], 0.012, white)
    x = -big + rng.uniform(0, 0.2)
    while x < big:
        cv.box(x, ry - 0.009, x + 0.1, ry + 0.009, white)
        x += 0.2
    # taxiway and apron on side s
    apron_col = _shade(_col(rng, "light grey", 8), rng.uniform(0.92, 1.05))
    t0 = ry + s * (w / 2 + 0.05)
    cv.box(-big, t0 - 0.03, big, t0 + 0.03, _shade(rw_col, 1.1))
    a0, a1 = ry + s * (w / 2 + 0.1), ry + s * (w / 2 + 0.62)
    ax = rng.uniform(-0.3, 0.3)
    cv.box(ax - 1.2, min(a0, a1), ax + 1.2, max(a0, a1), apron_col)
    # terminal building behind the apron
    tb = ry + s * (w / 2 + 0.78)
    cv.rect(ax + rng.uniform(-0.3, 0.3), tb, rng.uniform(0.8, 1.4), 0.25, _col(rng, "light grey", 12))

    n_want = int(rng.integers(1, 6))
    pname = _choice(rng, ["white", "grey", "red", "blue", "yellow"], [5, 2, 1, 1, 1])
    pcol = _col(rng, pname, 8)
    L = rng.uniform(0.24, 0.3)
    sp = L * rng.uniform(1.15, 1.35)
    py = ry + s * (w / 2 + 0.1 + 0.26)
    x0 = ax + rng.uniform(-0.1, 0.1) - sp * (n_want - 1) / 2
    heading = -s * math.pi / 2
    n = 0
    for i in range(n_want):
        px_ = x0 + i * sp + rng.uniform(-0.02, 0.02)
        if not cv.visible(px_, py, L * 0.55):
            continue
        for poly in _plane_polys(px_, py, L, heading + rng.uniform(-0.08, 0.08)):
            cv.shadowed(poly, pcol, ground=apron_col)
        n += 1
    if n == 0:  # rotation pushed them all out; park one in the middle of the apron
        for poly in _plane_polys(ax * 0.0, py, L, heading):
            cv.shadowed(poly, pcol, ground=apron_col)
        n = 1
    adj, runs = cv.direction(1, 0)
    side = cv.side(0, s)
    are = _v(n, "is", "are")
    counted = [
        (f"{_nn(n, pname + ' plane')} {are} parked beside a {rw_name} runway", {"plane"}),
        (f"there {are} {_nn(n, pname + ' airplane')} on the apron next to the runway", {"plane"}),
        (f"an airport with {_nn(n, 'plane')} parked on the {side} side of the runway", {"plane"}),
        (f"{_nn(n, 'aircraft', 'aircraft')} {are} parked near a {adj} runway", {"plane"}),
    ]
    other = [
        f"a {rw_name} runway runs {runs} across the airport",
        f"this is an airport with a {adj} runway",
        f"{_some(n, pname + ' plane')} {are} parked on the apron beside the runway",
        f"the apron with {_some(n, pname + ' plane')} lies on the {side} side of a long runway",
        f"a long {adj} runway with white markings and a terminal beside it",
    ]
    caps = _pick_captions(rng, counted, other, {"plane"})
    params = {"counts": {"plane": n}, "plane_color": pname, "runway_color": rw_name,
              "runway_orientation": adj, "apron_side": side}
    return cv, caps, params


def _parkinglot(rng, size):
    angle = _angle(rng, [0, 90, 0, 90, 45], 7)
    asphalt = _jit(rng, (96, 96, 100), 10)
    cv = _Canvas(size, angle, asphalt)
    R = int(rng.integers(1, 4))
    names = ["white", "red", "blue", "black", "yellow", "green", "light grey"]
    k = int(rng.choice([1, 2], p=[0.4, 0.6]))
    cols = [names[i] for i in rng.choice(len(names), size=k, replace=False)]
    carL, carW = rng.uniform(0.17, 0.21), rng.uniform(0.085, 0.1)
    sp = rng.uniform(0.14, 0.18)
    gap = rng.uniform(0.5, 0.58)
    ys = [(j - (R - 1) / 2) * gap + rng.uniform(-0.05, 0.05) for j in range(R)]
    line_col = _col(rng, "white", 8)
    # a grass verge with trees outside the lot
    edge = (ys[-1] + carL / 2 + 0.3) if R > 1 else 0.75
    cv.box(-3, edge, 3, 3, _jit(rng, (92, 128, 70), 10))
    _trees(cv, rng, 70, lambda x, y: y > edge + 0.08, 0.05, 0.09, _jit(rng, (52, 98, 46), 8))
    occupied = rng.uniform(0.55, 0.95)
    n = 0
    per_row = []
    for y in ys:
        xs = np.arange(-1.5, 1.5, sp) + rng.uniform(0, sp)
        for x in xs:  # stall separators
            cv.line([(x - sp / 2, y - carL / 2 - 0.02), (x - sp / 2, y + carL / 2 + 0.02)], 0.009, line_col, False)
        cand = [x for x in xs if cv.visible(x, y, carL / 2 + 0.01)]
        take = [x for x in cand if rng.random() < occupied]
        if len(take) < 2 and len(cand) >= 2:  # a "row" needs at least two cars
            take = sorted(cand[i] for i in rng.choice(len(cand), size=2, replace=False))
        if len(take) > 6:  # keep counts small enough to be checked by eye at 128 px
            take = sorted(take[i] for i in rng.choice(len(take), size=6, replace=False))
        per_row.append(len(take))
        for j, x in enumerate(take):
            cname = cols[j % k] if j < k else cols[int(rng.integers(k))]
            c = _col(rng, cname, 10)
            pts = cv.rect_pts(x, y + rng.uniform(-0.01, 0.01), carW, carL, rng.uniform(-0.05, 0.05))
            cv.shadowed(pts, c, ground=asphalt)
            cv.rect(x, y - carL * 0.12 * (1 if rng.random() < 0.5 else -1), carW * 0.78, carL * 0.22, _shade(c, 0.45))
            n += 1
    rows = sum(1 for p in per_row if p > 0)
    adj, runs = cv.direction(1, 0)
    colw = _join(cols)
    counted = [
        (f"{_nn(n, colw + ' car')} are parked in {_nn(rows, 'row')}" if n > 1 else
         f"{_nn(n, colw + ' car')} is parked in the parking lot", {"car", "row"} if n > 1 else {"car"}),
        (f"a parking lot with {_nn(rows, 'row')} of {colw} cars", {"row"}),
        (f"there {'is' if n == 1 else 'are'} {_nn(n, 'car')} in the parking lot", {"car"}),
        (f"{_nn(rows, adj + ' row')} of parked cars", {"row"}),
    ]
    other = [
        f"many {colw} cars are parked neatly in a parking lot",
        f"a parking lot with white lines and {colw} cars",
        f"{colw} cars are parked in {adj} rows on grey asphalt",
        f"rows of parked cars run {runs} across the parking lot",
        "a large parking lot next to a strip of grass and trees",
    ]
    if n == 1:
        other = [t.replace("many ", "").replace(" cars", " car").replace("rows of parked car run",
                 "a parked car stands") for t in other]
    caps = _pick_captions(rng, counted, other, {"car", "row"})
    params = {"counts": {"car": n, "row": rows}, "car_colors": cols, "row_orientation": adj,
              "cars_per_row": per_row}
    return cv, caps, params


_CROPS = {"green": (86, 150, 62), "dark green": (44, 100, 44), "yellow": (214, 190, 94),
          "brown": (140, 98, 62)}


def _field(cv, rng, x0, y0, x1, y1, cname, vertical_furrows):
    base = _jit(rng, _CROPS[cname], 10)
    cv.box(x0, y0, x1, y1, base)
    dark = _shade(base, rng.uniform(0.8, 0.9))
    step = rng.uniform(0.035, 0.06)
    if vertical_furrows:
        x = x0 + step / 2
        while x < x1:
            cv.line([(x, y0), (x, y1)], 0.012, dark, False)
            x += step
    else:
        y = y0 + step / 2
        while y < y1:
            cv.line([(x0, y), (x1, y)], 0.012, dark, False)
            y += step


def _crop_sequence(rng, n):
    names = list(_CROPS)
    seq = [names[int(rng.integers(len(names)))]]
    while len(seq) < n:
        c = names[int(rng.integers(len(names)))]
        if c != seq[-1]:
            seq.append(c)
    return seq


def _farmland(rng, size):
    layout = "stripes" if rng.random() < 0.5 else "patches"
    path_col = _jit(rng, (170, 150, 112), 10)
    if layout == "stripes":
        cv = _Canvas(size, _angle(rng, [0, 45, 90, 135], 6), path_col)
        n = int(rng.integers(3, 7))
        # n strips inside [-1, 1]: n-1 inner boundaries at least 0.22 apart
        while True:
            b = np.sort(rng.uniform(-0.85, 0.85, n - 1))
            if n == 1 or np.all(np.diff(np.concatenate([[-1.0], b, [1.0]])) > 0.22):
                break
        edges = np.concatenate([[-2.0], b, [2.0]])
        crops = _crop_sequence(rng, n)
        along = rng.random() < 0.5
        for i in range(n):
            _field(cv, rng, -2.0, edges[i] + 0.012, 2.0, edges[i + 1] - 0.012, crops[i], not along)
        if rng.random() < 0.5:  # a dirt track across the strips
            x = rng.uniform(-0.6, 0.6)
            cv.line([(x, -2), (x + rng.uniform(-0.3, 0.3), 2)], 0.035, path_col)
        key, count = "strip", n
        adj, runs = cv.direction(1, 0)
    else:
        cv = _Canvas(size, _angle(rng, [0, 90], 5), path_col)
        gx, gy = [(2, 2), (2, 3), (3, 2), (3, 3)][int(rng.integers(4))]
        xb = np.concatenate([[-1.6], np.sort(rng.uniform(-0.6, 0.6, gx - 1)) if gx > 1 else [], [1.6]])
        yb = np.concatenate([[-1.6], np.sort(rng.uniform(-0.6, 0.6, gy - 1)) if gy > 1 else [], [1.6]])
        while np.any(np.diff(xb) < 0.4) or np.any(np.diff(yb) < 0.4):
            xb[1:-1] = np.sort(rng.uniform(-0.6, 0.6, gx - 1))
            yb[1:-1] = np.sort(rng.uniform(-0.6, 0.6, gy - 1))
        crops = _crop_sequence(rng, gx * gy)
        i = 0
        for a in range(gx):
            for c in range(gy):
                _field(cv, rng, xb[a] + 0.02, yb[c] + 0.02, xb[a + 1] - 0.02, yb[c + 1] - 0.02,
                       crops[i], rng.random() < 0.5)
                i += 1
        key, count = "field", gx * gy
        adj, runs = cv.direction(1, 0)
    distinct = list(dict.fromkeys(crops))
    colw = _join(distinct)
    if key == "strip":
        counted = [
            (f"{_nn(count, 'long strip')} of farmland run {runs}", {"strip"}),
            (f"farmland divided into {_nn(count, 'parallel strip')} of {colw} crops", {"strip"}),
            (f"there are {_nn(count, adj + ' strip')} of cultivated fields", {"strip"}),
        ]
        other = [
            f"{colw} fields lie side by side in {adj} stripes",
            f"long {adj} stripes of {colw} farmland",
            f"cultivated strips of {colw} crops run {runs}",
            "this is a piece of farmland with parallel crop rows",
            f"{adj} fields of {colw} crops next to each other",
        ]
    else:
        counted = [
            (f"the farmland is divided into {_nn(count, 'field')} of {colw} crops", {"field"}),
            (f"a patchwork of {_nn(count, 'rectangular field')}", {"field"}),
            (f"{_nn(count, 'plot')} of farmland are separated by dirt paths", {"field"}),
        ]
        other = [
            f"a patchwork of {colw} fields",
            f"rectangular fields of {colw} crops separated by narrow paths",
            f"this is a piece of farmland with {colw} plots",
            "several cultivated plots form a grid of farmland",
            f"{colw} crop fields are arranged in a grid",
        ]
    caps = _pick_captions(rng, counted, other, {key})
    params = {"counts": {key: count}, "layout": layout, "crop_colors": crops, "orientation": adj}
    return cv, caps, params


def _river(rng, size):
    cv_angle = _angle(rng, [0, 45, 90, 135], 8)
    dense = rng.random() < 0.6
    ground = _jit(rng, (42, 80, 40), 8) if dense else _jit(rng, (120, 146, 82), 10)
    cv = _Canvas(size, cv_angle, ground)
    A = rng.uniform(0.02, 0.26)
    om = rng.uniform(1.6, 3.0)
    ph = rng.uniform(0, 2 * math.pi)
    y0 = rng.uniform(-0.25, 0.25)
    width = rng.uniform(0.12, 0.2)
    xs = np.linspace(-2.0, 2.0, 49)
    ys = y0 + A * np.sin(om * xs + ph)
    pts = list(zip(xs.tolist(), ys.tolist()))

    def far_from_river(x, y):
        return np.abs(y - (y0 + A * np.sin(om * x + ph))) > width / 2 + 0.06

    tree = _jit(rng, (48, 104, 44), 8)
    if dense:
        _trees(cv, rng, 900, far_from_river, 0.045, 0.075, tree)
    else:
        _trees(cv, rng, int(rng.integers(25, 60)), far_from_river, 0.04, 0.07, tree)
    wname = _choice(rng, ["blue", "brown"], [3, 1])
    water = _jit(rng, (46, 88, 140) if wname == "blue" else (128, 104, 70), 8)
    # bridges: decide first, so that their roads go under the river and the deck on top
    nb = int(rng.choice([0, 0, 1, 1, 2]))
    spans = []
    for sl in rng.permutation(5)[:nb]:
        bx = -0.6 + 0.3 * float(sl)
        by = y0 + A * math.sin(om * bx + ph)
        rot = math.atan(A * om * math.cos(om * bx + ph))
        if cv.visible(bx, by, width / 2 + 0.08):
            spans.append((bx, by, rot))
    road = _jit(rng, (150, 140, 120), 8)
    for bx, by, rot in spans:
        c, s_ = math.cos(rot), math.sin(rot)
        cv.line([(bx + s_ * 2, by - c * 2), (bx - s_ * 2, by + c * 2)], 0.035, road)
    cv.line(pts, width + 0.05, _jit(rng, (176, 160, 120), 8))
    cv.line(pts, width, water)
    cv.line(pts, width * 0.35, _shade(water, 0.9))
    deck = _col(rng, "light grey", 8)
    for bx, by, rot in spans:
        cv.shadowed(cv.rect_pts(bx, by, 0.07, width + 0.16, rot), deck, ground=water)
    bridges = len(spans)
    adj, runs = cv.direction(1, 0)
    shape = "winding" if A > 0.14 else ("gently curving" if A > 0.06 else "straight")
    veg = "dense green forest" if dense else "green grassland with scattered trees"
    counted = []
    if bridges:
        counted = [
            (f"{_nn(bridges, 'bridge')} {'crosses' if bridges == 1 else 'cross'} the {wname} river", {"bridge"}),
            (f"a {shape} river spanned by {_nn(bridges, 'bridge')} runs through {veg}", {"bridge"}),
        ]
    other = [
        f"a {wname} river runs {runs} through {veg}",
        f"a {shape} {wname} river crosses {veg}",
        f"{veg} lines both banks of a {shape} river",
        f"a {adj} river flows through {veg}",
        f"the {wname} water of a {shape} river with sandy banks",
        f"a river runs {runs} with {'trees' if dense else 'grass'} on both sides",
    ]
    keys = {"bridge"} if bridges else set()
    caps = _pick_captions(rng, counted, other, keys)
    params = {"counts": {"bridge": bridges} if bridges else {}, "water_color": wname,
              "vegetation": "forest" if dense else "grassland", "shape": shape, "orientation": adj}
    return cv, caps, params


def _wavy(x0, x1, y, amp, om, ph, n=60):
    xs = np.linspace(x0, x1, n)
    return list(zip(xs.tolist(), (y + amp * np.sin(om * xs + ph)).tolist()))


def _beach(rng, size):
    angle = _angle(rng, [0, 45, 90, 135, 180, 225, 270, 315], 6)
    sea_name = _choice(rng, ["blue", "turquoise"])
    sea = _jit(rng, (34, 86, 150) if sea_name == "blue" else (44, 150, 158), 8)
    cv = _Canvas(size, angle, _shade(sea, 0.7))
    sand_name = _choice(rng, ["yellow", "white"])
    sand = _jit(rng, (224, 200, 140) if sand_name == "yellow" else (232, 226, 210), 8)
    c = rng.uniform(-0.3, 0.1)  # coastline (sea at y < c)
    sw = rng.uniform(0.4, 0.6)
    amp, om, ph = rng.uniform(0.01, 0.05), rng.uniform(2, 5), rng.uniform(0, 6.3)
    # sea: darker with depth
    for k, f in enumerate([0.78, 0.86, 0.93, 1.0]):
        top = c - 0.9 + 0.22 * k
        cv.poly(_wavy(-2, 2, top, amp, om, ph) + [(2, c + 0.1), (-2, c + 0.1)], _shade(sea, f))
    land = _jit(rng, (84, 120, 62), 10)
    cv.poly(_wavy(-2, 2, c, amp, om, ph) + [(2, 2), (-2, 2)], sand)
    back = c + sw
    cv.poly(_wavy(-2, 2, back, amp * 0.6, om * 0.7, ph) + [(2, 2), (-2, 2)], land)
    hinter = _choice(rng, ["trees", "road"])
    if hinter == "road":
        cv.line(_wavy(-2, 2, back + 0.12, amp * 0.6, om * 0.7, ph), 0.08, _jit(rng, (110, 110, 112), 6))
    _trees(cv, rng, 260, lambda x, y: y > back + (0.22 if hinter == "road" else 0.05), 0.04, 0.07,
           _jit(rng, (50, 100, 46), 8))
    foam = _col(rng, "white", 6)
    nw = int(rng.integers(2, 4))
    for k in range(nw):
        yk = c - 0.025 - 0.07 * k
        cv.line(_wavy(-2, 2, yk, amp, om, ph + 0.3 * k), 0.02 if k == 0 else 0.012, foam)
    n_want = int(rng.choice([0, 2, 3, 4, 5, 6]))
    uname = _choice(rng, ["red", "yellow", "blue", "orange"])
    ucol = _col(rng, uname, 8)
    n = 0
    placed: list[tuple[float, float]] = []
    tries = 0
    while n < n_want and tries < 200:
        tries += 1
        x = rng.uniform(-0.9, 0.9)
        y = rng.uniform(c + 0.1, back - 0.08)
        if not cv.visible(x, y, 0.05) or any((x - a) ** 2 + (y - b) ** 2 < 0.14 ** 2 for a, b in placed):
            continue
        sx, sy = cv.shadow
        cv.circle(x + sx, y + sy, 0.042, _shade(sand, 0.55))
        cv.circle(x, y, 0.042, ucol)
        cv.circle(x, y, 0.012, _shade(ucol, 0.6))
        placed.append((x, y))
        n += 1
    side = cv.side(0, -1)
    land_side = cv.side(0, 1)
    adj, runs = cv.direction(1, 0)
    counted = []
    if n:
        counted = [
            (f"{_nn(n, uname + ' umbrella')} stand on the {sand_name} sand", {"umbrella"}),
            (f"a beach with {_nn(n, 'beach umbrella')} between the sea and the {hinter}", {"umbrella"}),
        ]
    other = [
        f"a {sand_name} sandy beach lies between the {sea_name} sea and the {hinter}",
        f"white waves break along a {sand_name} beach",
        f"the {sea_name} sea is on the {side} side of the beach",
        f"a {adj} coastline with {sand_name} sand and {sea_name} water",
        f"the sea on the {side} and green land on the {land_side}",
        f"a long beach runs {runs} along the {sea_name} sea",
    ]
    caps = _pick_captions(rng, counted, other, {"umbrella"} if n else set())
    params = {"counts": {"umbrella": n} if n else {}, "sea_color": sea_name, "sand_color": sand_name,
              "sea_side": side, "hinterland": hinter}
    return cv, caps, params


_ROOFS = {"red": (170, 62, 46), "grey": (118, 118, 124), "brown": (118, 78, 52),
          "blue": (60, 82, 150), "white": (226, 224, 218)}


def _residential(rng, size):
    angle = _angle(rng, [0, 45, 90, 135], 6)
    lawn = _jit(rng, (96, 138, 70), 10)
    cv = _Canvas(size, angle, lawn)
    street_col = _jit(rng, (112, 112, 114), 8)
    y0 = rng.uniform(-0.15, 0.15)
    sw = rng.uniform(0.12, 0.16)
    cross = rng.random() < 0.45
    x1 = rng.uniform(-0.35, 0.35)
    _trees(cv, rng, 120, lambda x, y: np.abs(y - y0) > 0.62, 0.04, 0.075, _jit(rng, (46, 96, 44), 8))
    cv.box(-3, y0 - sw / 2, 3, y0 + sw / 2, street_col)
    if cross:
        cv.box(x1 - sw / 2, -3, x1 + sw / 2, 3, street_col)
    rname = _choice(rng, list(_ROOFS))
    roof = _jit(rng, _ROOFS[rname], 8)
    hw, hh = rng.uniform(0.2, 0.25), rng.uniform(0.17, 0.21)
    sp = hw + rng.uniform(0.12, 0.18)
    setback = rng.uniform(0.1, 0.14)
    drive = _jit(rng, (176, 174, 168), 6)
    n = 0
    rows = 0
    for side in (-1, 1):
        hy = y0 + side * (sw / 2 + setback + hh / 2)
        xs = np.arange(-1.6, 1.6, sp) + rng.uniform(0, sp)
        got = 0
        for x in xs:
            if cross and abs(x - x1) < sw / 2 + hw / 2 + 0.04:
                continue
            if not cv.visible(x, hy, math.hypot(hw, hh) / 2 + 0.01):
                continue
            dx = x + rng.uniform(-0.02, 0.02)
            # driveway to the street
            cv.box(dx + hw * 0.15, min(hy, y0), dx + hw * 0.38, max(hy, y0), drive)
            pts = cv.rect_pts(dx, hy, hw, hh)
            cv.shadowed(pts, roof, ground=lawn)
            # gable roof: the half facing the sun is lighter
            cv.box(dx - hw / 2, hy - hh / 2, dx + hw / 2, hy, _shade(roof, 1.12))
            cv.line([(dx - hw / 2, hy), (dx + hw / 2, hy)], 0.008, _shade(roof, 0.7), False)
            n += 1
            got += 1
        rows += got > 0
    streets = 2 if cross else 1
    adj, runs = cv.direction(1, 0)
    both = rows == 2
    H = _plural(n, "house")
    counted = [
        (f"{_nn(n, 'house')} with {rname} roofs {'line both sides of' if both else 'stand along'} a street",
         {"house"}),
        (f"a residential area with {_nn(n, 'house')} and {_nn(streets, 'street')}", {"house", "street"}),
        (f"there {'is' if n == 1 else 'are'} {_nn(n, rname + '-roofed house')} in this neighbourhood", {"house"}),
        (f"{_nn(streets, 'street')} {_v(streets, 'runs', 'cross')} through a neighbourhood of "
         f"{rname}-roofed houses", {"street"}),
    ]
    other = [
        f"{H} with {rname} roofs are arranged in neat rows along the street",
        f"a street runs {runs} through the residential area",
        f"trees and green lawns surround the {H} with {rname} roofs",
        f"this is a residential area with {rname} roofs and driveways",
        f"detached {H} with {rname} roofs and green gardens",
    ]
    caps = _pick_captions(rng, counted, other, {"house", "street"})
    params = {"counts": {"house": n, "street": streets}, "roof_color": rname,
              "street_orientation": adj, "house_rows": rows}
    return cv, caps, params


def _storagetanks(rng, size):
    angle = _angle(rng, [0, 45, 90, 135], 8)
    ground = _jit(rng, (172, 160, 138), 10)
    cv = _Canvas(size, angle, ground)
    layout = _choice(rng, ["row", "grid", "cluster"])
    tname = _choice(rng, ["white", "grey"], [3, 2])
    tcol = _jit(rng, (232, 232, 228) if tname == "white" else (126, 130, 134), 8)
    if layout == "row":
        k = int(rng.integers(1, 5))
        r = rng.uniform(0.13, 0.2) if k <= 2 else rng.uniform(0.12, 0.15)
        sp = 2 * r + rng.uniform(0.06, 0.12)
        pos = [((i - (k - 1) / 2) * sp, 0.0) for i in range(k)]
    elif layout == "grid":
        k = int(rng.integers(2, 4))
        r = rng.uniform(0.11, 0.14)
        sp = 2 * r + rng.uniform(0.06, 0.1)
        pos = [((i - (k - 1) / 2) * sp, (j - 0.5) * sp) for j in range(2) for i in range(k)]
    else:
        k = int(rng.integers(3, 7))
        pos = []
        r = rng.uniform(0.1, 0.14)
        tries = 0
        while len(pos) < k and tries < 300:
            tries += 1
            x, y = rng.uniform(-0.7, 0.7, 2)
            if all((x - a) ** 2 + (y - b) ** 2 > (2 * r + 0.05) ** 2 for a, b in pos):
                pos.append((float(x), float(y)))
    off = (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1))
    pos = [(x + off[0], y + off[1]) for x, y in pos]
    pos = [p for p in pos if cv.visible(p[0], p[1], r + 0.03)] or [(0.0, 0.0)]
    n = len(pos)
    # bund wall and access road
    xs_, ys_ = [p[0] for p in pos], [p[1] for p in pos]
    wall = _shade(ground, 1.15)
    m = r + 0.06
    cv.line([(min(xs_) - m, min(ys_) - m), (max(xs_) + m, min(ys_) - m), (max(xs_) + m, max(ys_) + m),
             (min(xs_) - m, max(ys_) + m), (min(xs_) - m, min(ys_) - m)], 0.015, wall, False)
    ry = max(ys_) + m + 0.1
    cv.box(-3, ry, 3, ry + 0.09, _jit(rng, (100, 100, 104), 6))
    pipe = _shade(ground, 0.6)
    for (xa, ya), (xb, yb) in zip(pos, pos[1:]):
        cv.line([(xa, ya), (xb, yb)], 0.012, pipe, False)
    sx, sy = cv.shadow
    for x, y in pos:
        cv.circle(x + sx * 1.4, y + sy * 1.4, r, _shade(ground, 0.45))
        cv.circle(x, y, r, tcol)
        cv.circle(x, y, r * 0.8, None, outline=_shade(tcol, 0.8), width=cv.w(0.01))
        cv.circle(x - r * 0.1, y - r * 0.1, r * 0.12, _shade(tcol, 0.85))
    counts = {"tank": n}
    if layout == "grid" and len({round(y, 6) for _, y in pos}) == 1:
        layout = "row"  # visibility dropped a whole row
    rows_txt = {"row": "in a single row", "grid": "in two rows", "cluster": "in an irregular cluster"}[layout]
    if layout == "grid":
        counts["row"] = 2
    if n == 1:
        rows_txt = "on its own"
    are = _v(n, "is", "are")
    counted = [
        (f"{_nn(n, tname + ' storage tank')} {are} arranged {rows_txt}", set(counts)),
        (f"there {are} {_nn(n, 'round oil tank')} in this industrial area", {"tank"}),
        (f"an oil depot with {_nn(n, tname + ' tank')} surrounded by a wall", {"tank"}),
    ]
    other = [
        f"{_some(n, tname + ' round storage tank')} {are} arranged {rows_txt}",
        f"{_some(n, 'round ' + tname + ' tank')} with pipelines on bare ground",
        f"this is a tank farm with {_some(n, tname + ' cylindrical tank')}",
        f"{_some(n, 'storage tank')} {_v(n, 'casts a shadow', 'cast shadows')} next to a road",
        f"{_some(n, tname + ' oil tank')} {_v(n, 'stands', 'stand')} {rows_txt} beside a road",
    ]
    caps = _pick_captions(rng, counted, other, set(counts))
    params = {"counts": counts, "tank_color": tname, "layout": layout if n > 1 else "single"}
    return cv, caps, params


_COURTS = {
    "tennis": {"green": (58, 132, 78), "blue": (44, 92, 160), "red": (170, 70, 52)},
    "basketball": {"orange": (210, 120, 56), "blue": (48, 96, 170), "green": (60, 134, 76)},
}


def _sportscourts(rng, size):
    angle = _angle(rng, [0, 90], 5)
    bg_name = _choice(rng, ["grass", "pavement"])
    bg = _jit(rng, (98, 140, 72) if bg_name == "grass" else (150, 148, 142), 10)
    cv = _Canvas(size, angle, bg)
    kind = _choice(rng, ["tennis", "basketball"])
    cname = _choice(rng, list(_COURTS[kind]))
    surf = _jit(rng, _COURTS[kind][cname], 8)
    apron = _shade(surf, 0.8)
    want = int(rng.integers(1, 5))
    cw, cl = (0.27, 0.6) if kind == "tennis" else (0.32, 0.6)
    aw, al = cw + 0.07, cl + 0.12
    sp = aw + rng.uniform(0.0, 0.05)
    x0 = rng.uniform(-0.05, 0.05) - sp * (want - 1) / 2
    yc = rng.uniform(-0.12, 0.12)
    _trees(cv, rng, 150, lambda x, y: np.abs(y - yc) > al / 2 + 0.12, 0.04, 0.075, _jit(rng, (48, 98, 46), 8))
    line = _col(rng, "white", 6)
    lw = 0.011
    n = 0
    centers = [x0 + i * sp for i in range(want)]
    centers = [x for x in centers if cv.visible(x, yc, 0) and cv.visible(x - aw / 2, yc - al / 2)
               and cv.visible(x + aw / 2, yc + al / 2) and cv.visible(x - aw / 2, yc + al / 2)
               and cv.visible(x + aw / 2, yc - al / 2)] or [0.0]
    if len(centers) > 1:
        cv.box(min(centers) - aw / 2 - 0.02, yc - al / 2 - 0.02,
               max(centers) + aw / 2 + 0.02, yc + al / 2 + 0.02, apron)
    for x in centers:
        cv.box(x - aw / 2, yc - al / 2, x + aw / 2, yc + al / 2, apron)
        cv.box(x - cw / 2, yc - cl / 2, x + cw / 2, yc + cl / 2, surf)
        L, R, T, B = x - cw / 2, x + cw / 2, yc - cl / 2, yc + cl / 2
        cv.line([(L, T), (R, T), (R, B), (L, B), (L, T)], lw, line, False)
        if kind == "tennis":
            inner = cw * 0.37
            for yy in (yc - cl * 0.27, yc + cl * 0.27):
                cv.line([(x - inner, yy), (x + inner, yy)], lw, line, False)
            for xx in (x - inner, x + inner):
                cv.line([(xx, T), (xx, B)], lw, line, False)
            cv.line([(x, yc - cl * 0.27), (x, yc + cl * 0.27)], lw, line, False)
            cv.line([(L - 0.02, yc), (R + 0.02, yc)], lw * 1.6, (30, 30, 30), False)
        else:
            cv.line([(L, yc), (R, yc)], lw, line, False)
            cv.circle(x, yc, cw * 0.18, None, outline=line, width=cv.w(lw))
            for end in (-1, 1):
                ye = yc + end * cl / 2
                key_end = ye - end * cl * 0.2  # the painted key under each basket
                cv.box(x - cw * 0.17, min(ye, key_end), x + cw * 0.17, max(ye, key_end), _shade(surf, 0.85))
                x0_, y0_ = cv.px(x - cw * 0.42, ye - cw * 0.42)
                x1_, y1_ = cv.px(x + cw * 0.42, ye + cw * 0.42)
                start, stop = (0, 180) if end == -1 else (180, 360)
                cv.draw.arc([x0_, y0_, x1_, y1_], start, stop, fill=line, width=cv.w(lw))
        n += 1
    are = _v(n, "is", "are")
    place = "side by side" if n > 1 else "on its own"
    counted = [
        (f"{_nn(n, cname + ' ' + kind + ' court')} {are} arranged {place}", {"court"}),
        (f"there {are} {_nn(n, kind + ' court')} surrounded by {bg_name} and trees", {"court"}),
        (f"{_nn(n, kind + ' court')} with {cname} {_v(n, 'surface', 'surfaces')} and white lines", {"court"}),
    ]
    other = [
        f"{_some(n, cname + ' ' + kind + ' court')} with white lines {are} surrounded by {bg_name}",
        f"this is a sports facility with {_some(n, cname + ' ' + kind + ' court')}",
        f"{_some(n, kind + ' court')} with {cname} {_v(n, 'surface lies', 'surfaces lie')} next to some trees",
        f"white lines mark the {cname} {kind} {_plural(n, 'court')}",
        f"a playground with {_some(n, cname + ' ' + kind + ' court')} on {bg_name}",
    ]
    caps = _pick_captions(rng, counted, other, {"court"})
    params = {"counts": {"court": n}, "court_type": kind, "court_color": cname, "surroundings": bg_name}
    return cv, caps, params


def _boat(cv, x, y, L, W, col, rot):
    c, s = math.cos(rot), math.sin(rot)

    def tr(pts):
        return [(x + u * c - v * s, y + u * s + v * c) for u, v in pts]

    hull = tr([(L / 2, 0), (L * 0.25, W / 2), (-L / 2, W / 2), (-L / 2, -W / 2), (L * 0.25, -W / 2)])
    cv.shadowed(hull, col, strength=0.5, ground=(20, 50, 80))
    cv.poly(tr([(L * 0.1, W * 0.28), (-L * 0.25, W * 0.28), (-L * 0.25, -W * 0.28), (L * 0.1, -W * 0.28)]),
            _shade(col, 0.78))


def _harbor(rng, size):
    angle = _angle(rng, [0, 90, 180, 270], 8)
    wname = _choice(rng, ["blue", "turquoise"])
    water = _jit(rng, (36, 78, 124) if wname == "blue" else (42, 120, 128), 8)
    cv = _Canvas(size, angle, water)
    yl = rng.uniform(0.45, 0.6)  # quay line, land below
    concrete = _jit(rng, (160, 158, 150), 8)
    cv.box(-3, yl, 3, 3, concrete)
    cont_cols = [(176, 60, 44), (50, 90, 160), (60, 130, 70), (200, 150, 50), (220, 220, 215)]
    for _ in range(int(rng.integers(8, 20))):
        cx, cy = rng.uniform(-1.4, 1.4), rng.uniform(yl + 0.12, 1.4)
        cv.rect(cx, cy, 0.1, 0.04, _jit(rng, cont_cols[int(rng.integers(5))], 10))
    P = int(rng.integers(1, 4))
    pier_len = rng.uniform(0.9, 1.2)
    spacing = rng.uniform(0.5, 0.6)
    px_ = [(i - (P - 1) / 2) * spacing + rng.uniform(-0.05, 0.05) for i in range(P)]
    pw = 0.06
    for x in px_:
        cv.shadowed(cv.rect_pts(x, yl - pier_len / 2, pw, pier_len + 0.02), concrete, ground=water)
    bname = _choice(rng, ["white", "red", "blue", "yellow"], [4, 1, 1, 1])
    bcol = _col(rng, bname, 8)
    want = int(rng.integers(2, 9))
    L, W = rng.uniform(0.17, 0.21), rng.uniform(0.06, 0.07)
    slots = []
    for x in px_:
        for sd in (-1, 1):
            for k in range(4):
                slots.append((x + sd * (pw / 2 + W / 2 + 0.012), yl - 0.12 - k * (L + 0.05)))
    order = rng.permutation(len(slots))
    n = 0
    for i in order:
        if n >= want:
            break
        x, y = slots[i]
        if y - L / 2 < yl - pier_len or not cv.visible(x, y, L / 2 + 0.01):
            continue
        if any(abs(x - px2) < pw / 2 + W / 2 for px2 in px_):  # would overlap another pier
            continue
        _boat(cv, x, y, L, W, _jit(rng, bcol, 6), -math.pi / 2 if rng.random() < 0.5 else math.pi / 2)
        n += 1
    if n == 0:
        _boat(cv, px_[0] + pw / 2 + W / 2 + 0.012, yl - 0.2, L, W, bcol, -math.pi / 2)
        n = 1
    land_side = cv.side(0, 1)
    adj, _ = cv.direction(0, 1)
    are = _v(n, "is", "are")
    piers = _plural(P, "pier")
    counted = [
        (f"{_nn(n, bname + ' boat')} {are} moored along {_nn(P, 'pier')}", {"boat", "pier"}),
        (f"a harbor with {_nn(P, 'pier')} extending into the {wname} water", {"pier"}),
        (f"there {are} {_nn(n, 'boat')} docked in the harbor", {"boat"}),
        (f"{_nn(n, 'small ' + bname + ' boat')} beside the {piers}", {"boat"}),
    ]
    other = [
        f"{_some(n, bname + ' boat')} {are} moored at the {piers} of a harbor",
        f"a harbor with {wname} water and a quay on the {land_side} side",
        f"{_some(P, 'long pier')} {_v(P, 'reaches', 'reach')} into the {wname} water "
        f"from the quay on the {land_side} side",
        f"this is a port with {_some(n, bname + ' boat')} and containers on the quay",
        f"{_some(P, adj + ' pier')} with {_some(n, bname + ' boat')} in {wname} water",
    ]
    caps = _pick_captions(rng, counted, other, {"boat", "pier"})
    params = {"counts": {"boat": n, "pier": P}, "boat_color": bname, "water_color": wname,
              "land_side": land_side}
    return cv, caps, params


_SAND = {"yellow": (218, 186, 122), "orange": (206, 142, 84), "brown": (160, 124, 88)}


def _desert(rng, size):
    angle = _angle(rng, [0, 45, 90, 135], 10)
    sname = _choice(rng, list(_SAND))
    sand = _jit(rng, _SAND[sname], 8)
    cv = _Canvas(size, angle, sand)
    style = _choice(rng, ["dunes", "rocky"])
    if style == "dunes":
        k = int(rng.integers(5, 10))
        om, amp = rng.uniform(1.5, 4.0), rng.uniform(0.05, 0.15)
        gap = 2.9 / k
        for i in range(k + 1):
            y = -1.45 + i * gap + rng.uniform(-0.05, 0.05)
            ph = rng.uniform(0, 6.3)
            crest = _wavy(-1.6, 1.6, y, amp, om, ph, 50)
            lee = _wavy(-1.6, 1.6, y + gap * rng.uniform(0.3, 0.45), amp, om, ph, 50)
            cv.poly(crest + lee[::-1], _shade(sand, rng.uniform(0.78, 0.86)))
            cv.line(crest, 0.012, _shade(sand, 1.12))
    else:
        for _ in range(int(rng.integers(80, 160))):
            x, y = rng.uniform(-1.45, 1.45, 2)
            r = rng.uniform(0.008, 0.03)
            cv.circle(x, y, r, _shade(sand, rng.uniform(0.45, 0.75)))
        for _ in range(int(rng.integers(4, 9))):
            pts = [tuple(rng.uniform(-1.45, 1.45, 2))]
            for _ in range(4):
                pts.append((pts[-1][0] + rng.uniform(-0.25, 0.25), pts[-1][1] + rng.uniform(-0.25, 0.25)))
            cv.line(pts, 0.008, _shade(sand, 0.72))
    T = int(rng.choice([0, 0, 1, 1, 2]))
    track = _shade(sand, 1.25) if style == "dunes" else _shade(sand, 0.65)
    a = rng.uniform(0, math.pi)
    for _ in range(T):
        # straight-ish tracks through the middle, at clearly different angles, so each is visible
        a += rng.uniform(0.6, 2.5)
        ox, oy = rng.uniform(-0.3, 0.3, 2)
        dx, dy = math.cos(a), math.sin(a)
        pts = [(ox - 2 * dx, oy - 2 * dy), (ox + 0.1 * dy, oy - 0.1 * dx), (ox + 2 * dx, oy + 2 * dy)]
        cv.line(pts, 0.03, track)
    shrubs = rng.random() < 0.4
    if shrubs:
        _trees(cv, rng, int(rng.integers(6, 15)), _everywhere, 0.012, 0.025, (92, 100, 60), extent=1.0)
    _, runs = cv.direction(1, 0)
    surface = "rippled sand dunes" if style == "dunes" else "scattered rocks and cracks"
    counted = []
    if T:
        counted = [
            (f"{_nn(T, 'dirt track')} {'crosses' if T == 1 else 'cross'} the bare {sname} land", {"track"}),
            (f"{_article(sname)} {sname} desert crossed by {_nn(T, 'track')}", {"track"}),
        ]
    other = [
        f"bare {sname} desert covered with {surface}",
        f"a vast area of bare {sname} land without buildings",
        f"{surface} on {sname} barren land",
        f"this is a piece of {sname} bare land" + (" with a few shrubs" if shrubs else ""),
        f"an empty {sname} desert with {surface}" + (" and sparse shrubs" if shrubs else ""),
    ]
    if style == "dunes":
        other.append(f"sand dunes run {runs} across the {sname} desert")
    caps = _pick_captions(rng, counted, other, {"track"} if T else set())
    params = {"counts": {"track": T} if T else {}, "sand_color": sname, "surface": style,
              "shrubs": shrubs}
    return cv, caps, params


_RENDERERS: dict[str, Callable] = {
    "airport": _airport,
    "parkinglot": _parkinglot,
    "farmland": _farmland,
    "river": _river,
    "beach": _beach,
    "residential": _residential,
    "storagetanks": _storagetanks,
    "sportscourts": _sportscourts,
    "harbor": _harbor,
    "desert": _desert,
}
assert list(_RENDERERS) == SCENE_CLASSES


def render_scene(cls: str, rng: np.random.Generator, image_size: int = 128):
    """Draw one scene of class ``cls``.

    Returns ``(image, captions, params)``: an RGB ``PIL.Image`` of ``image_size`` pixels, five
    captions written from the parameters that drew the image, and those parameters
    (``params["counts"]`` maps a counted noun such as ``"plane"`` to how many are drawn and
    fully visible; ``params["label"]`` is ``cls``).
    """
    if cls not in _RENDERERS:
        raise ConfigError(f"unknown synthetic scene class {cls!r}; choose from {', '.join(SCENE_CLASSES)}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ConfigError(f"image_size must be an integer >= 16, got {image_size!r}")
    cv, captions, params = _RENDERERS[cls](rng, int(image_size))
    grain = 0.6 if cls in ("beach", "harbor") else 1.0
    image = cv.finish(rng, grain=grain)
    params = dict(params)
    params["label"] = cls
    params["rotation_deg"] = round(cv.angle, 2)
    return image, captions, params


# --------------------------------------------------------------------------------------------
# dataset writer
# --------------------------------------------------------------------------------------------
_README = """\
SYNTHETIC DATA - NOT REAL REMOTE SENSING IMAGERY

Every image in this folder was drawn by priorclip.data.synthetic (numpy + PIL): simple top-down
scenes (airport, parking lot, farmland, ...) with captions written from the same random
parameters that drew them. It exists so that `priorclip demo` and the tests can run without
downloading anything. Numbers measured on it say nothing about real benchmarks (UCM-captions,
RSICD, RSITMD, Sydney-captions).

generator : priorclip.data.synthetic.generate_synthetic_dataset
seed      : {seed}
image_size: {image_size}
classes   : {classes}
images    : {n_images} ({n_per_class} per class)
splits    : {split_counts}

Files:
  images/<class>_<i>.png  the scenes (class name before the first underscore)
  dataset.json            Karpathy layout: images[].filename/imgid/split/sentences/sentids,
                          plus label and the drawing parameters under synthetic_params
  labels.csv              filename,scene (like UC Merced's labels.csv)
"""


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder rounding; every split with a positive fraction gets >= 1 image when
    there are enough images, so small demos still have val and test examples of each class."""
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                j = max(range(len(counts)), key=lambda j: counts[j])
                counts[j] -= 1
                counts[i] += 1
    return counts


def generate_synthetic_dataset(out_dir, n_per_class: int = 40, image_size: int = 128, seed: int = 0,
                               splits: Sequence[float] = (0.7, 0.15, 0.15),
                               classes: Sequence[str] | None = None) -> Path:
    """Write a synthetic captioned aerial dataset to ``out_dir`` and return its dataset.json.

    Layout: ``images/<class>_<i>.png``, ``dataset.json`` (Karpathy layout, splits stratified per
    class), ``labels.csv`` (``filename,scene``) and ``README.txt``. Deterministic in ``seed``.
    """
    classes = list(SCENE_CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in SCENE_CLASSES]
    if unknown or not classes:
        raise ConfigError(f"classes: unknown synthetic scene class(es) {unknown}; "
                          f"choose from {', '.join(SCENE_CLASSES)}")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes: each class may appear once, got {classes}")
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ConfigError(f"n_per_class must be a positive integer, got {n_per_class!r}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ConfigError(f"image_size must be an integer >= 16, got {image_size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    splits = [float(s) for s in splits]
    if len(splits) != 3 or any(s < 0 for s in splits) or abs(sum(splits) - 1.0) > 1e-6:
        raise ConfigError("splits must be three non-negative fractions (train, val, test) summing to 1, "
                          f"got {tuple(splits)}")

    out = Path(out_dir)
    img_dir = out / "images"
    try:
        img_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create synthetic dataset folder {img_dir}: {e}") from e

    names = ("train", "val", "test")
    entries = []
    sentid = 0
    split_totals = dict.fromkeys(names, 0)
    for cls in classes:
        ci = SCENE_CLASSES.index(cls)
        counts = _split_counts(int(n_per_class), splits)
        assignment = [names[k] for k in range(3) for _ in range(counts[k])]
        perm = np.random.default_rng([int(seed), 1, ci]).permutation(int(n_per_class))
        for i in range(int(n_per_class)):
            rng = np.random.default_rng([int(seed), 0, ci, i])
            image, captions, params = render_scene(cls, rng, int(image_size))
            filename = f"{cls}_{i}.png"
            buf = io.BytesIO()
            image.save(buf, format="PNG", compress_level=3)
            (img_dir / filename).write_bytes(buf.getvalue())
            imgid = len(entries)
            split = assignment[int(perm[i])]
            split_totals[split] += 1
            sents = []
            for raw in captions:
                sents.append({"raw": raw, "tokens": tokenize_caption(raw), "imgid": imgid, "sentid": sentid})
                sentid += 1
            entries.append({
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentences": sents,
                "sentids": [s["sentid"] for s in sents],
                "label": cls,
                "synthetic_params": params,
            })

    dataset = {"dataset": "synthetic-aerial", "synthetic": True, "seed": int(seed),
               "image_size": int(image_size), "classes": classes, "images": entries}
    path = out / "dataset.json"
    path.write_text(json.dumps(dataset, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["filename", "scene"])
        for e in entries:
            w.writerow([e["filename"], e["label"]])
    (out / "README.txt").write_text(_README.format(
        seed=seed, image_size=image_size, classes=", ".join(classes), n_images=len(entries),
        n_per_class=n_per_class, split_counts=", ".join(f"{k} {v}" for k, v in split_totals.items())),
        encoding="utf-8")
    return path
