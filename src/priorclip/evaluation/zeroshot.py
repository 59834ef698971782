"""Zero-shot scene classification: classify images by their similarity to prompted class names.

Protocol (CLIP style):

1. each class name becomes text through every prompt template (`"an aerial image of {}."`);
2. a class's text embedding is the unit-length mean of its unit-length template embeddings (the
   "prompt ensemble"; averaging unit vectors weighs every template equally);
3. an image is assigned the class with the highest cosine similarity; top-1, top-5, per-class
   accuracy and the most-confused (true, predicted) pairs are reported.

Scene datasets rarely ship an official split. The common protocol evaluates the last 20 % of
each class with files sorted by name; `last_fraction_indices` implements it with a *natural* sort
(`2.jpg` < `10.jpg`), so UCM's numbered files split the same way a person would read them.

Unreadable images are skipped and reported (`bad_files` in the result), never silently counted:
accuracy is over the images that were actually classified.
"""
from __future__ import annotations

import copy
import math
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from priorclip.errors import ConfigError, DataError

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "an aerial image of {}.",
    "a satellite image of {}.",
    "a remote sensing image of {}.",
    "an aerial photograph of the {}.",
)

_CHUNKS = re.compile(r"(\d+)")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


# ---- class names and prompts ------------------------------------------------------------------


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: `2.jpg` < `10.jpg`, `img_9` < `img_10`.

    Text chunks compare case-insensitively; the original string breaks remaining ties so the
    order is total and deterministic.
    """
    parts = tuple((0, int(t), "") if t.isdigit() else (1, 0, t.casefold()) for t in _CHUNKS.split(str(name)) if t)
    return parts + ((2, 0, str(name)),)


def classname_to_text(name: str) -> str:
    """Readable class name for a prompt: `baseball_diamond`/`BaseballDiamond` -> "baseball diamond".

    Underscores, hyphens and camelCase boundaries become spaces and the result is lower-cased
    (acronyms such as "UAV" keep their case). Concatenated lower-case names such as
    "storagetanks" are left alone: splitting them needs a dictionary (pass a classnames mapping).
    """
    words = []
    for part in re.split(r"[_\-\s]+", str(name).strip()):
        for w in _CAMEL.split(part):
            if w:
                words.append(w if (len(w) > 1 and w.isupper()) else w.lower())
    return " ".join(words) if words else str(name)


def resolve_classnames(classes: Sequence[str], mapping: Mapping[str, str] | None = None) -> list[str]:
    """Prompt names for label `classes`: `mapping[c]` where given, else `classname_to_text(c)`.

    Keys of `mapping` that are not classes are ignored (one mapping file can serve several datasets).
    """
    mapping = dict(mapping or {})
    out = []
    for c in classes:
        name = mapping.get(c)
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"classnames mapping: value for {c!r} must be a string, got {type(name).__name__}")
        out.append(name.strip() if name else classname_to_text(c))
    return out


def check_templates(templates: Sequence[str]) -> list[str]:
    """Validate prompt templates: each must contain exactly one `{}` (where the class name goes)."""
    if isinstance(templates, str):
        templates = [templates]
    out = [str(t) for t in templates]
    if not out:
        raise ConfigError("templates: need at least one prompt template such as 'an aerial image of {}.'")
    for t in out:
        if t.count("{}") != 1:
            raise ConfigError(f"templates: {t!r} must contain exactly one '{{}}' where the class name goes")
    return out


def read_templates_file(path: str | os.PathLike) -> list[str]:
    """One template per line; blank lines and lines starting with '#' are ignored."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: templates file not found (one prompt template with '{{}}' per line)")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    if not templates:
        raise DataError(f"{p}: templates file has no templates")
    try:
        return check_templates(templates)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


@torch.inference_mode()
def class_text_embeddings(model, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                          device="cpu", batch_size: int = 256) -> torch.Tensor:
    """[C, D] unit-length class embeddings: normalised mean of normalised template embeddings (fp32)."""
    templates = check_templates(templates)
    texts = [t.replace("{}", c) for c in classnames for t in templates]
    feats = []
    for start in range(0, len(texts), batch_size):
        tokens = model.tokenize(texts[start:start + batch_size]).to(device)
        feats.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(feats).view(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


# ---- split ------------------------------------------------------------------------------------


def last_fraction_indices(filenames: Sequence[str], labels: Sequence[int], fraction: float = 0.2) -> list[int]:
    """Indices of the last `fraction` of each class, files in natural-sort order.

    Per class of n images, k = round-half-up(n * fraction), at least 1 (n = 100 -> 20; n = 7 ->
    1). Unlabelled items (label < 0) are never selected. Returned in ascending index order.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"split fraction must be in (0, 1], got {fraction}")
    if len(filenames) != len(labels):
        raise DataError(f"split: {len(filenames)} filenames but {len(labels)} labels")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        if y >= 0:
            by_class.setdefault(int(y), []).append(i)
    chosen = []
    for members in by_class.values():
        members.sort(key=lambda i: natural_key(filenames[i]))
        k = max(1, math.floor(len(members) * fraction + 0.5 + 1e-9))
        chosen.extend(members[-k:])
    return sorted(chosen)


def parse_split(split: str) -> float | None:
    """'last20' -> 0.2, 'last<P>' -> P/100; None for dataset splits ('all', 'test', ...)."""
    m = re.fullmatch(r"last(\d{1,3})", str(split).strip().lower())
    if not m:
        return None
    p = int(m.group(1))
    if not 1 <= p <= 100:
        raise ConfigError(f"--split {split!r}: the percentage must be 1..100")
    return p / 100.0


# ---- images -----------------------------------------------------------------------------------


class _PathImages(Dataset):
    """(tensor, position) per path; a bad file gives None and an entry in `report`."""

    def __init__(self, paths: Sequence[str], transform: Callable, report):
        self.paths, self.transform, self.report = list(paths), transform, report

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from priorclip.data.images import safe_load_image

        image = safe_load_image(self.paths[i], self.report)
        return None if image is None else (self.transform(image), i)


class _DatasetImages(Dataset):
    """(tensor, position) for `indices` of a priorclip dataset's "images" view (None if unreadable)."""

    def __init__(self, view, indices: Sequence[int]):
        self.view, self.indices = view, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        sample = self.view[self.indices[i]]
        return None if sample is None else (sample["image"], i)


def _collate(batch):
    items = [b for b in batch if b is not None]
    if not items:
        return None
    return torch.stack([b[0] for b in items]), torch.tensor([b[1] for b in items], dtype=torch.long)


def _is_caption_dataset(obj) -> bool:
    return hasattr(obj, "paths") and hasattr(obj, "labels") and hasattr(obj, "mode") and hasattr(obj, "bad_files")


# ---- classification ---------------------------------------------------------------------------


def zeroshot_classify(
    model,
    images,
    labels: Sequence[int] | None = None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device="cpu",
    transform: Callable | None = None,
    ks: Sequence[int] = (1, 5),
    top_confusions: int = 10,
) -> dict[str, Any]:
    """Zero-shot classify `images` and return a JSON-ready report.

    `images`: a `priorclip.data` dataset (its "images" view is read; `labels` default to
    `dataset.labels` and `classnames` to the readable form of `dataset.classes`; `indices`
    restricts to a subset, e.g. `last_fraction_indices(...)`) or a sequence of image paths with
    `labels` (class ids into `classnames`, -1 = unlabelled, skipped).

    Report keys: `top1`, `top5` (percent over classified images; `top{k}` for each k in `ks`,
    k capped at the number of classes), `mean_per_class` (mean of per-class top-1 over classes
    with images), `per_class` ({name: {"n", "correct", "accuracy"}}), `confusions` (most frequent
    off-diagonal (true, predicted) pairs with count and rate = count / images of the true class),
    `confusion_matrix` (rows = true, columns = predicted), counts (`n_images`, `n_classified`,
    `n_unlabelled`, `n_bad`) and `bad_files` ([{"path", "reason"}]).
    """
    from priorclip.data.images import BadFileReport

    device = torch.device(device)
    tf = transform or model.image_transform(train=False)
    tmp = tempfile.NamedTemporaryFile(prefix="priorclip-zeroshot-bad-", suffix=".jsonl", delete=False)
    tmp.close()
    os.unlink(tmp.name)  # created on first bad file by BadFileReport
    report = BadFileReport(tmp.name)

    if _is_caption_dataset(images):
        dataset = images
        if dataset.paths is None:
            raise DataError(f"{dataset!r}: annotation-only dataset; give images_root to read the images")
        labels = dataset.labels if labels is None else labels
        if classnames is None:
            classnames = resolve_classnames(dataset.classes)
        view = copy.copy(dataset)
        view.mode, view.on_error, view.bad_files = "images", "none", report
        view._bad_images = set()
        if view.transforms is None:
            view.transforms = tf
        all_paths = dataset.paths
        positions = list(range(len(all_paths))) if indices is None else [int(i) for i in indices]
        labels_all = list(labels)
        if len(labels_all) != len(all_paths):
            raise DataError(f"{dataset!r}: {len(labels_all)} labels for {len(all_paths)} images")
        keep = [i for i in positions if labels_all[i] >= 0]
        paths = [all_paths[i] for i in keep]
        y = [int(labels_all[i]) for i in keep]
        source: Dataset = _DatasetImages(view, keep)
    else:
        all_paths = [str(p) for p in images]
        if labels is None or classnames is None:
            raise ConfigError("zeroshot_classify: with image paths, pass labels and classnames")
        if len(labels) != len(all_paths):
            raise DataError(f"zeroshot_classify: {len(all_paths)} images but {len(labels)} labels")
        positions = list(range(len(all_paths))) if indices is None else [int(i) for i in indices]
        keep = [i for i in positions if labels[i] >= 0]
        paths = [all_paths[i] for i in keep]
        y = [int(labels[i]) for i in keep]
        source = _PathImages(paths, tf, report)

    classnames = [str(c) for c in classnames]
    n_classes = len(classnames)
    dupes = sorted(c for c, m in Counter(classnames).items() if m > 1)
    if dupes:
        raise ConfigError(f"classnames: {dupes} name several classes; prompts could not tell them apart")
    if n_classes < 2:
        raise DataError(f"zero-shot classification needs at least 2 classes, got {classnames}")
    bad_label = [v for v in y if v >= n_classes]
    if bad_label:
        raise DataError(f"labels: class id {bad_label[0]} out of range for {n_classes} class names")
    n_unlabelled = len(positions) - len(keep)
    if not keep:
        raise DataError("zero-shot classification: no labelled images to classify "
                        "(check the label source: --labels csv:PATH | prefix | folder)")

    was_training = model.training
    model.eval()
    loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    kmax = min(max(ks), n_classes)
    preds = torch.full((len(keep), kmax), -1, dtype=torch.long)
    done = torch.zeros(len(keep), dtype=torch.bool)
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            text = class_text_embeddings(model, classnames, templates, device=device)
            for batch in loader:
                if batch is None:
                    continue
                x, pos = batch
                feats = F.normalize(model.encode_image(x.to(device, non_blocking=True).float()).float(), dim=-1)
                top = (feats @ text.T).topk(kmax, dim=-1).indices.cpu()
                preds[pos] = top
                done[pos] = True
    finally:
        model.train(was_training)
        report.refresh()
        try:
            os.unlink(tmp.name)
        except FileNotFoundError:
            pass

    y_t = torch.tensor(y, dtype=torch.long)
    ok = done
    yk, pk = y_t[ok], preds[ok]
    n = int(ok.sum())
    result: dict[str, Any] = {
        "model": getattr(model, "model_name", type(model).__name__),
        "classes": classnames,
        "templates": list(templates),
        "n_images": len(positions),
        "n_classified": n,
        "n_unlabelled": n_unlabelled,
        "n_bad": int((~ok).sum()),
        "bad_files": [{"path": e.path, "reason": e.reason} for e in report.entries],
    }
    for k in ks:
        kk = min(k, n_classes)
        hits = (pk[:, :kk] == yk[:, None]).any(dim=1) if n else torch.zeros(0, dtype=torch.bool)
        result[f"top{k}"] = 100.0 * int(hits.sum()) / n if n else float("nan")
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    if n:
        confusion.index_put_((yk, pk[:, 0]), torch.ones(n, dtype=torch.long), accumulate=True)
    per_class, accs = {}, []
    for c, name in enumerate(classnames):
        total, correct = int(confusion[c].sum()), int(confusion[c, c])
        acc = 100.0 * correct / total if total else None
        per_class[name] = {"n": total, "correct": correct, "accuracy": acc}
        if acc is not None:
            accs.append(acc)
    result["mean_per_class"] = sum(accs) / len(accs) if accs else float("nan")
    result["per_class"] = per_class
    pairs = Counter({(t, p): int(confusion[t, p]) for t in range(n_classes) for p in range(n_classes)
                     if t != p and confusion[t, p] > 0})
    result["confusions"] = [
        {"true": classnames[t], "predicted": classnames[p], "count": cnt,
         "rate": 100.0 * cnt / per_class[classnames[t]]["n"]}
        for (t, p), cnt in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top_confusions]
    ]
    result["confusion_matrix"] = confusion.tolist()
    return result


def format_zeroshot_table(result: Mapping[str, Any], max_confusions: int = 5) -> str:
    """Short markdown summary: overall accuracies, per-class accuracy, the most-confused pairs."""
    ks = [k for k in result if re.fullmatch(r"top\d+", k)]
    lines = ["| " + " | ".join(k.replace("top", "top-") for k in ks) + " | mean per-class | images |",
             "|" + "---:|" * (len(ks) + 2),
             "| " + " | ".join(f"{result[k]:.2f}" for k in ks)
             + f" | {result['mean_per_class']:.2f} | {result['n_classified']} |", ""]
    lines += ["| class | n | top-1 |", "|---|---:|---:|"]
    for name, pc in result["per_class"].items():
        if pc["n"]:
            lines.append(f"| {name} | {pc['n']} | {pc['accuracy']:.1f} |")
    conf = result.get("confusions", [])[:max_confusions]
    if conf:
        lines += ["", "most confused (true -> predicted): " + "; ".join(
            f"{c['true']} -> {c['predicted']} {c['count']} ({c['rate']:.0f}%)" for c in conf)]
    return "\n".join(lines)
