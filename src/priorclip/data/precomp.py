"""The AMFMN / GaLR / SWAN "precomp" caption files: `{split}_caps.txt` + `{split}_filename.txt`.

Two variants exist in the wild, both handled:

* one filename line per caption line (the test files): consecutive captions of one image are
  grouped by filename (a name reappearing later is merged into its first image);
* one filename line per image and k caption lines per image (the train files: RSICD 9,828 names /
  49,140 captions): captions are taken k at a time.

    PrecompCaptions("/data/annotations/rsitmd_precomp", "test", images_root="/data/rsitmd/images",
                    labels="prefix")

Without `images_root` (and no `root/images` folder) the dataset is annotation-only.
"""
from __future__ import annotations

from pathlib import Path

from priorclip.data.base import CaptionDataset
from priorclip.errors import CaptionFileError, DataError


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


class PrecompCaptions(CaptionDataset):
    default_mode = "pairs"

    @property
    def caps_file(self) -> Path:
        return self.root / f"{self.split}_caps.txt"

    @property
    def filename_file(self) -> Path:
        return self.root / f"{self.split}_filename.txt"

    def _required_files(self):
        return [self.caps_file, self.filename_file]

    def _load_records(self):
        caps, names = _read_lines(self.caps_file), _read_lines(self.filename_file)
        if not names:
            raise DataError(f"{self.filename_file}: no filenames")
        empty = [i + 1 for i, n in enumerate(names) if not n]
        if empty:
            raise CaptionFileError([(self.filename_file, f"line {i}", "is empty") for i in empty])
        if len(caps) == len(names):
            groups: dict[str, list[str]] = {}
            for n, c in zip(names, caps):
                groups.setdefault(n, []).append(c)
            return list(groups.items())
        if len(caps) % len(names) == 0 and len(set(names)) == len(names):
            k = len(caps) // len(names)
            return [(n, caps[i * k:(i + 1) * k]) for i, n in enumerate(names)]
        raise DataError(
            f"{self.caps_file} has {len(caps)} captions but {self.filename_file} has {len(names)} "
            "names: expected one name per caption, or the same number of captions for every name"
        )
