"""`priorclip demo`: the whole pipeline end to end, on built-in synthetic data or a real dataset.

generate data -> train the prior -> train small open-domain PriorCLIP (the configuration that won
the UCM ablation: frozen prior, stage 1 + stage 2, Attribution loss) and the same CLIP without the
prior, with the same pairs and seed -> evaluate both on the test split (next to chance) -> index the images
-> a few example queries -> (optionally) serve the page. Each step says what it does and how long
it took. The built-in data is SYNTHETIC (drawn scenes with captions written from the drawing), so
its numbers say that the pipeline works, not how PriorCLIP does on real imagery.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

EXAMPLE_QUERIES = [
    "three planes parked beside a grey runway",
    "two rows of cars in a parking lot",
    "a river runs through dense green forest",
    "white storage tanks on bare ground",
]


#: Below this many test images the demo warns that its model comparison is mostly noise
#: (one test image moves i2t R@K by 100 / n_test points; README "Demo" shows how much seeds move it).
SMALL_TEST_SPLIT = 200


@dataclass
class DemoSettings:
    out: Path = Path("priorclip-demo")
    data: Path | None = None  # a Karpathy dataset.json (or its folder); None: generate synthetic data
    labels: str | None = None  # label source for --data: prefix, csv:PATH, folder, none (default: labels.csv beside it)
    n_per_class: int = 16  # synthetic images per scene class
    image_size: int = 96  # model input size (the small configs' 128 px costs 1.8x more on CPU)
    prior_epochs: int = 8
    epochs: int = 6  # every model sees the same pairs; PriorCLIP's last STAGE2_EPOCHS are stage 2
    batch_size: int = 32
    workers: int = 2
    seed: int = 0
    device: str = "cpu"
    steps: list = field(default_factory=list)


#: The settings that decide a demo's outputs (not where they go or how fast they are made).
OUTPUT_SETTINGS = ("data", "labels", "n_per_class", "image_size", "prior_epochs", "epochs",
                   "batch_size", "seed")
SUMMARY = "demo_summary.json"
#: The models the demo compares: open-domain PriorCLIP, the configuration that won the UCM ablation
#: (README, benchmarks/ucm_from_scratch), against the same CLIP without the prior.
PRIORCLIP_MODEL, BASELINE_MODEL = "priorclip-open-small", "priorclip-open-baseline-small"
STAGE2_EPOCHS = 2  # of `epochs`, PriorCLIP's stage 2 (prior and text frozen)


def _output_settings(settings: DemoSettings) -> dict:
    return {k: (str(getattr(settings, k)) if k == "data" and settings.data is not None else getattr(settings, k))
            for k in OUTPUT_SETTINGS}


def previous_run(settings: DemoSettings) -> tuple[dict | None, str]:
    """-> (summary, "") when `settings.out` holds a finished demo made with the same settings, so
    `--serve` can show it at once instead of spending minutes redoing it; else (None, why not)."""
    out = Path(settings.out)
    try:
        summary = json.loads((out / SUMMARY).read_text())
    except FileNotFoundError:
        return None, f"no finished demo in {out}/ (no {SUMMARY})"
    except (OSError, ValueError) as exc:
        return None, f"{out / SUMMARY} is unreadable ({exc})"
    missing = [str(p) for p in (out / "index" / "index.json", *(out / "runs" / r / "test_best.json" for r in
                                                                ("prior", "priorclip", "baseline")))
               if not p.is_file()]
    if missing:
        return None, f"the demo in {out}/ is incomplete ({', '.join(missing)} missing)"
    if "settings" not in summary:
        return None, f"the demo in {out}/ was made by an older version that did not record its settings"
    if summary["settings"] != _output_settings(settings):
        return None, f"the demo in {out}/ was made with other settings ({summary.get('settings')})"
    return summary, ""


def serve_index(index_dir: Path, port: int = 8000, device: str = "cpu") -> None:
    """The search page on the demo's index, on this machine only, until Ctrl-C."""
    import uvicorn

    from .search.query import SearchIndex
    from .search.server import create_app

    print(f"\nServing the search page at http://127.0.0.1:{port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(create_app(SearchIndex(index_dir, device=device)), host="127.0.0.1", port=port, log_level="warning")


def print_next_steps(index_dir: Path) -> None:
    """Commands to try next, written so they run as printed (the running executable, not a bare
    `priorclip` that may not be on PATH after scripts/setup.sh)."""
    import shlex

    from .cli.invocation import priorclip_command

    cmd, idx = priorclip_command(), shlex.quote(str(index_dir))
    print(f"Search it yourself:  {cmd} search {idx} \"planes near a runway\"   or   {cmd} serve {idx}")


def _step(settings: DemoSettings, title: str):
    """Context manager printing a step's title and duration, recorded in settings.steps."""
    class _Timer:
        def __enter__(self):
            print(f"\n== {title}", flush=True)
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            seconds = time.perf_counter() - self.t0
            settings.steps.append({"step": title, "seconds": round(seconds, 1)})
            if exc[0] is None:
                print(f"   done in {seconds:.1f} s", flush=True)
            return False

    return _Timer()


def _dataset_json(path: Path) -> Path:
    if path.is_file():
        return path
    candidates = sorted(path.glob("dataset*.json"))
    if not candidates:
        raise DataError(f"--data {path}: no dataset*.json (Karpathy layout) found there")
    return candidates[0]


def chance_levels(n_images: int, captions_per_image: float) -> dict:
    """Recall of a random ranking: t2i R@K = K/n_images; i2t R@K = 1 - C(n-g, K)/C(n, K)."""
    n_texts = round(n_images * captions_per_image)
    g = round(captions_per_image)
    out = {}
    for k in (1, 5, 10):
        miss = 1.0
        for j in range(k):
            miss *= max(n_texts - g - j, 0) / (n_texts - j)
        out[f"i2t_r{k}"] = 100 * (1 - miss)
        out[f"t2i_r{k}"] = 100 * min(k / n_images, 1.0)
    out["mr"] = sum(out.values()) / 6
    return out


def run_demo(settings: DemoSettings, serve: bool = False, port: int = 8000) -> dict:
    from .evaluation.metrics import format_recall_table
    from .training import train
    from .training.recipe import recipe_from_dict

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    summary: dict = {"synthetic": settings.data is None, "settings": _output_settings(settings)}

    with _step(settings, "1/6 data"):
        if settings.data is None:
            from .data.synthetic import generate_synthetic_dataset

            dataset_json = generate_synthetic_dataset(out / "data", n_per_class=settings.n_per_class,
                                                      image_size=settings.image_size, seed=settings.seed)
            labels = "prefix"
            print(f"   generated SYNTHETIC aerial scenes (not real imagery) in {out / 'data'}")
        else:
            dataset_json = _dataset_json(Path(settings.data))
            labels = settings.labels or (f"csv:{dataset_json.parent / 'labels.csv'}"
                                         if (dataset_json.parent / "labels.csv").is_file() else "prefix")
            print(f"   using {dataset_json} (labels: {labels})")
        splits: dict = {}
        for img in json.loads(dataset_json.read_text())["images"]:
            splits[img.get("split", "train")] = splits.get(img.get("split", "train"), 0) + 1
        print("   images per split: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
        summary["dataset"], summary["splits"] = str(dataset_json), splits

    overrides = {"vision_cfg": {"image_size": settings.image_size}}
    common = {"data": {"path": str(dataset_json), "labels": labels}, "batch_size": settings.batch_size,
              "workers": settings.workers, "seed": settings.seed, "device": settings.device, "precision": "fp32",
              "tensorboard": False, "log_every": 5}

    with _step(settings, "2/6 train the prior (scene classifier on the train split)"):
        prior_dir = train(recipe_from_dict({**common, "stage": "prior", "model": PRIORCLIP_MODEL,
                                            "model_overrides": overrides,
                                            "epochs": settings.prior_epochs, "lr": 1e-3, "weight_decay": 0.05,
                                            "warmup_steps": 5, "bn_recalibrate_batches": 8,
                                            "data": {**common["data"], "augment": False}}),
                          out_dir=out / "runs" / "prior")
        prior_report = json.loads((prior_dir / "test_best.json").read_text()) if (prior_dir / "test_best.json").is_file() else {}
        if "accuracy" in prior_report:
            print(f"   prior test accuracy {prior_report['accuracy']:.1f} %")

    runs = {}
    stage1_epochs = max(settings.epochs - STAGE2_EPOCHS, 1)
    with _step(settings, f"3/6 train priorclip ({PRIORCLIP_MODEL}: prior frozen, stage 1 {stage1_epochs} + "
                         f"stage 2 {settings.epochs - stage1_epochs} epochs, Attribution loss)"):
        stage1 = train(recipe_from_dict({**common, "stage": "pretrain", "model": PRIORCLIP_MODEL,
                                         "model_overrides": overrides, "prior_checkpoint": str(prior_dir),
                                         "epochs": stage1_epochs, "lr": 5e-4, "weight_decay": 0.1, "warmup_steps": 5,
                                         "affiliation_weight": 1.0}), out_dir=out / "runs" / "priorclip-stage1")
        if settings.epochs > stage1_epochs:  # stage 2: vision-instruction fine-tuning, prior and text frozen
            runs["priorclip"] = train(recipe_from_dict({
                **common, "stage": "finetune", "init_checkpoint": str(stage1 / "checkpoints" / "best"),
                "epochs": settings.epochs - stage1_epochs, "lr": 1e-4, "weight_decay": 0.1, "warmup_steps": 0,
                "affiliation_weight": 1.0}), out_dir=out / "runs" / "priorclip")
        else:
            runs["priorclip"] = stage1
    with _step(settings, f"4/6 train baseline ({BASELINE_MODEL}: the same CLIP, no prior), {settings.epochs} epochs"):
        runs["baseline"] = train(recipe_from_dict({**common, "stage": "pretrain", "model": BASELINE_MODEL,
                                                   "model_overrides": overrides, "epochs": settings.epochs,
                                                   "lr": 5e-4, "weight_decay": 0.1, "warmup_steps": 5}),
                                 out_dir=out / "runs" / "baseline")

    with _step(settings, "5/6 evaluate on the test split (model selected on val)"):
        n_test = splits.get("test", 0)
        chance = chance_levels(n_test, 5) if n_test else {}
        results = {}
        for name, run_dir in runs.items():
            report = json.loads((run_dir / "test_best.json").read_text())
            results[name] = report
            print(f"\n   {name} (tie rule: expected; [min–max] where ties allow several answers)")
            print("   " + format_recall_table(report).replace("\n", "\n   "))
        if chance:
            print(f"\n   chance level: mR {chance['mr']:.1f} (i2t R@1 {chance['i2t_r1']:.1f}, t2i R@1 {chance['t2i_r1']:.1f})")
        if 0 < n_test < SMALL_TEST_SPLIT:
            print(f"   note: {n_test} test images only; one image moves i2t R@K by {100 / n_test:.0f} points, and the gap "
                  "between the two models changes by several mR points from one --seed to the next. Compare models "
                  "on a real benchmark (benchmarks/ucm_from_scratch/run.py), not on this run.")
        summary["results"] = {k: v["expected"] for k, v in results.items()}
        summary["chance"] = chance

    with _step(settings, "6/6 index the images and search them by text"):
        from .search.encoders import load_encoder
        from .search.index import build_index
        from .search.query import SearchIndex, format_table

        best = runs["priorclip"] / "checkpoints" / "best"
        images_root = dataset_json.parent / "images"  # the whole archive, as an analyst would index it
        index_dir = out / "index"
        build_index([images_root], index_dir, load_encoder(str(best), device=settings.device), model_spec=str(best),
                    batch_size=64, workers=0, progress=False, log=lambda *a, **k: None)
        index = SearchIndex(index_dir, device=settings.device)
        print(f"   indexed {len(index)} images into {index_dir}")
        summary["queries"] = {}
        for query in EXAMPLE_QUERIES:
            hits = index.search_text(query, k=3)
            print(f"\n   query: {query!r}")
            print("   " + format_table(hits).replace("\n", "\n   "))
            summary["queries"][query] = [h.get("path") for h in hits]
        summary["index"] = str(index_dir)

    summary["steps"] = settings.steps
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str) + "\n")  # last: marks it finished
    print(f"\nDemo finished in {summary['seconds']:.0f} s. Outputs in {out}/:")
    print("  data/ (dataset.json, images/)   runs/prior, runs/priorclip-stage1, runs/priorclip, runs/baseline "
          "(checkpoints, logs, test reports)")
    print(f"  index/ (search index)            {SUMMARY}")
    print_next_steps(index_dir)
    if serve:
        serve_index(index_dir, port, settings.device)
    return summary
