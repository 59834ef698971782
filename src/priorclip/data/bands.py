"""Which bands of a raster are red, green and blue: the file says, not the band position.

A 4-band scene delivered as Blue, Green, Red, NIR (GDAL colour interpretation set, as many vendors
do) read as bands 1, 2, 3 comes out with red and blue swapped, in the embedding and on screen
(issue #16.1). `choose_rgb_bands` decides once per file, in this order:

1. the user's choice (`--bands red,green,blue` or `--bands 3,2,1`; one band gives grey);
2. the colour interpretation (`dataset.colorinterp`) when it names a red, a green and a blue band;
3. band descriptions "red", "green", "blue" (any case);
4. Sentinel-2: descriptions B04/B03/B02 (zero-padded, as ESA names them) or a set with B8A or B12,
   or 13 bands without descriptions (the L1C order B1..B8, B8A, B9..B12) give B4, B3, B2.
   Unpadded "B4" alone is not enough: in Landsat 5/7 band 4 is near infrared;
5. nothing says: bands 1, 2, 3 (grey from band 1 for one- and two-band files), as before.

The result (`RgbBands`) is recorded per scene in a search index and shown with each hit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from priorclip.errors import ConfigError, DataError

# Sentinel-2 L1C band order (a 13-band stack without descriptions, e.g. EuroSAT)
SENTINEL2_L1C = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
_S2_ROLES = {"B2": "blue", "B3": "green", "B4": "red", "B8": "nir"}
_RGB = ("red", "green", "blue")
_UNINFORMATIVE = {"undefined", "gray"}  # GDAL's defaults for bands nobody labelled
_BCODE = re.compile(r"^b0*(\d{1,2}a?)$")

BandRequest = tuple  # 1 or 3 entries, each a 1-based band number (int) or a band name (str)


class BandNotFoundError(DataError):
    """`--bands` names a band the file does not have; the message lists the bands it has."""


@dataclass(frozen=True)
class RgbBands:
    """The bands shown as red, green, blue (1-based, a grey image repeats one band), their names
    as the file labels them (None where it does not) and which rule chose them."""

    indexes: tuple[int, int, int]
    names: tuple[str | None, str | None, str | None]
    source: str          # "--bands" | "colorinterp" | "description" | "sentinel-2" | "default"
    request: str | None = None  # the --bands text that chose them, normalised (None: automatic)

    def to_dict(self) -> dict:
        return {"bands": list(self.indexes), "names": list(self.names), "from": self.source,
                "request": self.request}

    @classmethod
    def from_dict(cls, d: dict | None) -> "RgbBands | None":
        if not d:
            return None
        return cls(tuple(d["bands"]), tuple(d.get("names") or (None,) * 3), d.get("from", "default"),
                   d.get("request"))


def parse_bands(text: str | Sequence | None) -> BandRequest | None:
    """`--bands` text ("red,green,blue", "3,2,1", "B4,B3,B2", "nir" for grey) as a tuple of band
    numbers and names (matched without regard to case); a ConfigError says what is wrong with it."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    if len(parts) not in (1, 3) or any(p == "" for p in parts):
        raise ConfigError(f"--bands {text!r}: give three bands for red, green, blue (e.g. red,green,blue or "
                          "3,2,1) or one band for grey")
    out = []
    for p in parts:
        if isinstance(p, int) or (isinstance(p, str) and p.isdigit()):
            if int(p) < 1:
                raise ConfigError(f"--bands {text!r}: band numbers start at 1, as in GDAL")
            out.append(int(p))
        elif isinstance(p, str):
            out.append(p.strip())
        else:
            raise ConfigError(f"--bands {text!r}: each band is a 1-based number or a name, got {p!r}")
    return tuple(out)


def request_text(request: BandRequest | None) -> str | None:
    return None if request is None else ",".join(str(b) for b in request)


def _band_facts(ds) -> tuple[int, list, list, list]:
    """(band count, descriptions, colour interpretations, Sentinel-2 codes) of a dataset."""
    count = ds.count
    descriptions = list(ds.descriptions or (None,) * count)
    return count, descriptions, _colorinterp(ds), _sentinel2_codes(descriptions, count)


def band_labels(ds) -> list[set[str]]:
    """For each band, the lower-case names it answers to: its description, its colour
    interpretation when informative, Sentinel-2 codes (B4 for B04) and their colours."""
    count, descriptions, interps, s2 = _band_facts(ds)
    labels = []
    for i in range(count):
        names = set()
        if descriptions[i]:
            d = descriptions[i].strip().lower()
            names.add(d)
            m = _BCODE.match(d)
            if m:
                names.add("b" + m.group(1))
        if interps[i] and (interps[i] not in _UNINFORMATIVE or (interps[i] == "gray" and count == 1)):
            names.add(interps[i])
        if s2[i]:
            names.add(s2[i].lower())
            if s2[i] in _S2_ROLES:
                names.add(_S2_ROLES[s2[i]])
        labels.append(names)
    return labels


def describe_bands(ds) -> str:
    """'1 Blue, 2 Green, 3 Red, 4 NIR' (unnamed bands by number only), for error messages."""
    return ", ".join(f"{i + 1} {n}" if n else str(i + 1) for i, n in enumerate(_display_names(ds)))


def choose_rgb_bands(ds, request: BandRequest | None = None, name: str = "raster") -> RgbBands:
    """The bands of the open rasterio dataset `ds` to show as red, green, blue (see module doc).

    `request` comes from `parse_bands`; a band number beyond the file's count or a name it does
    not have raises BandNotFoundError naming `name` and the bands the file has."""
    count = ds.count
    display = _display_names(ds)
    if request is not None:
        labels = band_labels(ds)
        picked = [_resolve(b, labels, count, ds, name) for b in request]
        if len(picked) == 1:
            picked *= 3
        return RgbBands(tuple(picked), tuple(display[b - 1] for b in picked), "--bands", request_text(request))

    interps = _colorinterp(ds)
    found = _find_roles([{c} if c else set() for c in interps])
    if found:
        return RgbBands(found, tuple(display[b - 1] for b in found), "colorinterp")
    descriptions = [(d or "").strip().lower() for d in (ds.descriptions or (None,) * count)]
    found = _find_roles([{d} for d in descriptions])
    if found:
        return RgbBands(found, tuple(display[b - 1] for b in found), "description")
    s2 = _sentinel2_codes(list(ds.descriptions or (None,) * count), count)
    if all(c in s2 for c in ("B4", "B3", "B2")):
        found = tuple(s2.index(c) + 1 for c in ("B4", "B3", "B2"))
        return RgbBands(found, tuple(display[b - 1] for b in found), "sentinel-2")
    found = (1, 2, 3) if count >= 3 else (1, 1, 1)
    return RgbBands(found, tuple(display[b - 1] for b in found), "default")


def _resolve(band, labels: list[set[str]], count: int, ds, name: str) -> int:
    if isinstance(band, int):
        if band > count:
            raise BandNotFoundError(f"{name}: asked for band {band} but the file has {count} band(s) "
                                    f"({describe_bands(ds)}); choose --bands among them")
        return band
    key = band.lower()
    want = {key}
    m = _BCODE.match(key)
    if m:
        want.add("b" + m.group(1))
    if key == "grey":
        want.add("gray")
    for i, names in enumerate(labels):
        if names & want:
            return i + 1
    raise BandNotFoundError(f"{name}: no band named {band!r}; its bands are {describe_bands(ds)}. "
                            "Pass --bands with these names or with band numbers (e.g. --bands 3,2,1)")


def _find_roles(labels: list[set[str]]) -> tuple[int, int, int] | None:
    """Band numbers of the first bands labelled red, green and blue, if all three are."""
    found = []
    for role in _RGB:
        hit = next((i + 1 for i, names in enumerate(labels) if role in names), None)
        if hit is None:
            return None
        found.append(hit)
    return tuple(found)


def _colorinterp(ds) -> list[str | None]:
    try:
        return [c.name.lower() for c in ds.colorinterp]
    except ValueError:  # a GDAL colour interpretation this rasterio does not know
        return [None] * ds.count


def _sentinel2_codes(descriptions: list[str | None], count: int) -> list[str | None]:
    """Each band's Sentinel-2 code ("B4", "B8A") when the file is recognisably Sentinel-2."""
    codes = []
    padded = False
    for d in descriptions:
        m = _BCODE.match((d or "").strip().lower())
        codes.append(("B" + m.group(1).upper()) if m else None)
        padded |= bool(m) and re.match(r"^b0\d$", (d or "").strip().lower()) is not None
    if any(codes) and (padded or "B8A" in codes or "B12" in codes):
        return codes
    if count == len(SENTINEL2_L1C) and not any(d for d in descriptions):
        return list(SENTINEL2_L1C)
    return [None] * count


def _display_names(ds) -> list[str | None]:
    """A band's name as the file gives it: description, else an informative colour
    interpretation, else a recognised Sentinel-2 code; None when the file names none."""
    count, descriptions, interps, s2 = _band_facts(ds)
    out = []
    for i in range(count):
        if descriptions[i]:
            out.append(descriptions[i].strip())
        elif interps[i] and (interps[i] not in _UNINFORMATIVE or (interps[i] == "gray" and count == 1)):
            out.append(interps[i])
        else:
            out.append(s2[i])
    return out
