"""Karpathy-style caption JSON (RSICD, UCM-captions, Sydney-captions, RSITMD releases).

Layout: `{"images": [{"filename": "1.jpg", "split": "train", "sentences": [{"raw": "..."}, ...],
optional "filepath": "subdir"}, ...]}`. `split` selects train/val/test (or "all"); "restval" counts
as train, as in the COCO release.

`root` is the JSON file itself or a folder holding exactly one `dataset*.json`; images default to
`<folder>/images`, or give `images_root`:

    KarpathyCaptions("/data/ucm-captions", split="test", labels="csv:/data/ucm-captions/labels.csv")
    KarpathyCaptions("/data/annotations/sydney_dataset_karpathy.json", "test", images_root="/data/sydney/imgs")
"""
from __future__ import annotations

import json
from pathlib import Path

from priorclip.data.base import CaptionDataset
from priorclip.errors import DataError

SPLITS = ("train", "val", "test", "all")


class KarpathyCaptions(CaptionDataset):
    default_mode = "pairs"

    def __init__(self, root, split="train", transforms=None, *, annotation_file=None, **kwargs):
        self.annotation_file = self._find_annotation(Path(root), annotation_file)
        super().__init__(root, split, transforms, **kwargs)

    @staticmethod
    def _find_annotation(root: Path, annotation_file) -> Path:
        if annotation_file is not None:
            p = Path(annotation_file)
            return p if p.is_absolute() or p.exists() else root / p
        if root.is_dir():
            found = sorted(root.glob("dataset*.json"))
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise DataError(
                    f"{root}: several Karpathy JSON files ({', '.join(f.name for f in found)}); "
                    "pass annotation_file= or the JSON path as root"
                )
            return root / "dataset.json"  # reported as missing by _verify
        return root

    def _required_files(self):
        return [self.annotation_file]


    def _load_records(self):
        path = self.annotation_file
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{path}: expected a Karpathy caption file with a top-level 'images' list")
        present = sorted({str(im.get("split")) for im in images if isinstance(im, dict)})
        if self.split not in SPLITS and self.split not in present:
            raise DataError(f"{path}: no split {self.split!r}; the file has splits {present}")
        want = {self.split} | ({"restval"} if self.split == "train" else set())
        records = []
        for k, im in enumerate(images):
            if not isinstance(im, dict) or "filename" not in im:
                raise DataError(f"{path}: images[{k}] has no 'filename'")
            if self.split != "all" and im.get("split") not in want:
                continue
            sents = im.get("sentences", [])
            try:
                caps = [str(s["raw"]).strip() if isinstance(s, dict) else str(s).strip() for s in sents]
            except KeyError:
                raise DataError(f"{path}: images[{k}].sentences[] entries need a 'raw' field") from None
            name = im["filename"]
            if im.get("filepath"):
                name = f"{im['filepath'].rstrip('/')}/{name}"
            records.append((name, caps))
        if not records:
            raise DataError(f"{path}: split {self.split!r} is empty (splits present: {present})")
        return records
