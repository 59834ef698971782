"""open_clip-style caption CSV: a header row, then one `filename,title` row per caption.

Rows of the same filename are one image's captions (first-appearance order). Column names and
separator are configurable (`image_key`, `caption_key`, `sep`), as in open_clip's `--csv-*` flags.
`root` is the CSV file, or a folder holding `{split}.csv`. File names are usually written relative
to some training machine (`data/RSICD/RSICD_images/x.jpg`); they are resolved under `images_root`
by relative path, then by base name.

    CsvCaptions("/data/annotations/csv/rsicd_test.csv", "test", images_root="/data/rsicd/images")
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from priorclip.data.base import CaptionDataset, read_utf8
from priorclip.errors import CaptionFileError, DataError


class CsvCaptions(CaptionDataset):
    default_mode = "pairs"

    def __init__(self, root, split="train", transforms=None, *, image_key="filename",
                 caption_key="title", sep=",", **kwargs):
        self.image_key, self.caption_key, self.sep = image_key, caption_key, sep
        root = Path(root)
        self.csv_file = root / f"{split}.csv" if root.is_dir() else root
        super().__init__(root, split, transforms, **kwargs)

    def _required_files(self):
        return [self.csv_file]

    def _load_records(self):
        path = self.csv_file
        groups: dict[str, list[str]] = {}
        text = read_utf8(path)
        with io.StringIO(text, newline="") as f:
            reader = csv.DictReader(f, delimiter=self.sep)
            cols = reader.fieldnames or []
            if self.image_key not in cols or self.caption_key not in cols:
                raise DataError(
                    f"{path}: needs columns '{self.image_key}' and '{self.caption_key}' (found {cols}); "
                    "set image_key= / caption_key= / sep="
                )
            problems = []  # every bad row, raised together at the end
            for row in reader:
                line = reader.line_num
                if row[self.caption_key] is None:
                    problems.append((path, f"line {line}", f"has fewer fields than the header (no '{self.caption_key}'); "
                                     f"check the separator (sep={self.sep!r}) and quoting"))
                    continue
                name = (row[self.image_key] or "").strip()
                if not name:
                    problems.append((path, f"line {line}", f"has an empty '{self.image_key}'"))
                    continue
                groups.setdefault(name, []).append((row[self.caption_key] or "").strip())
        if problems:
            raise CaptionFileError(problems)
        if not groups:
            raise DataError(f"{path}: no caption rows")
        return list(groups.items())
