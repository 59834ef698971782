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
import logging
from pathlib import Path

from priorclip.data.base import CaptionDataset, read_utf8
from priorclip.errors import CaptionFileError, DataError

SPLITS = ("train", "val", "test", "all")
log = logging.getLogger(__name__)


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
        text = read_utf8(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{path}: expected a Karpathy caption file with a top-level 'images' list")
        present = sorted({str(im.get("split")) for im in images if isinstance(im, dict)})
        if self.split not in SPLITS and self.split not in present:
            raise DataError(f"{path}: no split {self.split!r}; the file has splits {present}")
        want = {self.split} | ({"restval"} if self.split == "train" else set())
        records: list[tuple[str, list[str]]] = []
        first: dict[str, int] = {}  # image name -> (records index); duplicates are merged, as precomp/CSV do
        problems: list[tuple[Path, str, str]] = []  # every bad entry, raised together at the end
        for k, im in enumerate(images):
            if not isinstance(im, dict) or "filename" not in im:
                problems.append((path, f"images[{k}]", "has no 'filename'"))
                continue
            if not isinstance(im["filename"], str) or not im["filename"].strip():
                problems.append((path, f"images[{k}].filename", f"must be a non-empty string, got {im['filename']!r}"))
                continue
            if self.split != "all" and im.get("split") not in want:
                continue
            sents = im.get("sentences", [])
            if not isinstance(sents, list):
                problems.append((path, f"images[{k}].sentences", "must be a list of {'raw': ...} objects, "
                                 f"got {type(sents).__name__}"))
                continue
            caps = []
            for j, s in enumerate(sents):
                raw = s.get("raw") if isinstance(s, dict) else s
                if not isinstance(raw, str):
                    problems.append((path, f"images[{k}].sentences[{j}]", f"needs a string 'raw' field, got {s!r:.80}"))
                    continue
                caps.append(raw.strip())
            name = im["filename"]
            if im.get("filepath"):
                name = f"{str(im['filepath']).rstrip('/')}/{name}"
            if name in first:
                log.warning("%s: images[%d] repeats image %r of an earlier entry; its captions are merged into it",
                            path, k, name)
                records[first[name]][1].extend(caps)
                continue
            first[name] = len(records)
            records.append((name, caps))
        if problems:
            raise CaptionFileError(problems)
        if not records:
            raise DataError(f"{path}: split {self.split!r} is empty (splits present: {present})")
        return records
