"""UCM-captions from scratch: the paper's ablation on real data, against open_clip's own trainer.

Every subject of `subjects.py` (open_clip_train on a plain CLIP; our trainer on the same CLIP;
open- and closed-domain PriorCLIP with a prior first trained as a UCM scene classifier; ablations)
is trained from random weights on the UCM-captions train split with the same number of training
pairs (`--epochs` passes over all 8,400 (image, caption) pairs, the last incomplete batch dropped:
50,304 pairs at the defaults), selected on val (mR, every epoch), and scored on test (R@1/5/10
both ways + mR, tie rule `expected`, bounds beside). Main rows run for every `--seeds`, ablations
for the first seed unless `--ablation-seeds` says more. Writes benchmarks/results_ucm.json and the
section "## UCM-captions from scratch" of benchmarks/RESULTS.md; `--readme` also replaces the
README's table (between its `ucm-table` markers). A report that lacks some of the benchmark's runs
(main rows x `--seeds`, ablations x `--ablation-seeds`) says so, and which, in its first line.

    .venv/bin/python benchmarks/ucm_from_scratch/run.py [--seeds 0 1 2] [--subjects ...] [--readme]

open_clip_train needs pandas: in the pinned environment (scripts/setup.sh); elsewhere the `bench` extra.

Training cost on its own: the long runs' pairs/s come from whatever else ran beside them, so
`--speed` times every subject again in one call on one subset of the train split (each from
scratch, nothing read back) and writes the cost table (pairs/s against open_clip_train's beside the
FLOP bound) to benchmarks/results_ucm_speed.json and RESULTS.md; about 50 min for all subjects on
two idle cores (an estimate from the long runs' rates).

Resumable: each run lives in `--out/SEED/SUBJECT[/stageN]` (priors in `--out/SEED/prior-KIND`) and a
finished one is read back, not trained again, so the benchmark can be run in pieces (`--subjects`,
`--seeds`) and interrupted: an interrupted run continues exactly from its last checkpoint (every 40
steps; open_clip_train's runs start again). `--reuse benchmarks/results_ucm.json` also counts the runs
of a saved report as finished (same training settings checked), for a machine whose `--out` is gone.
Not a test: hours on two CPU cores (each subject's wall time and pairs/s are in the report);
`tests/benchmarks/test_ucm_benchmark.py` runs it on tiny models.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "benchmarks"))  # results_md, flops

from subjects import SUBJECTS, model_overrides  # noqa: E402

README_START, README_END = "<!-- ucm-table:start -->", "<!-- ucm-table:end -->"
SAVE_EVERY = 40  # steps between the resumable checkpoints of a run (and at every epoch's end)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = os.environ.get("PRIORCLIP_SHARED_DIR", str(ROOT.parent / "shared"))
    ap.add_argument("--data", default=f"{shared}/data/ucm-captions", help="Karpathy-layout UCM-captions folder")
    ap.add_argument("--out", default=str(ROOT / "runs" / "ucm_from_scratch"), help="run directories (resumable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the main rows")
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=None, help="seeds of the ablations (first seed)")
    ap.add_argument("--subjects", nargs="+", default=list(SUBJECTS), choices=list(SUBJECTS), metavar="SUBJECT",
                    help=f"which rows to train (default all): {', '.join(SUBJECTS)}")
    ap.add_argument("--epochs", type=int, default=6, help="passes over all training pairs, every subject")
    ap.add_argument("--stage2-epochs", type=int, default=2, help="of --epochs, the open domain's stage 2 (fine-tuning)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4, help="stage 1 / single-stage learning rate")
    ap.add_argument("--stage2-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=30, help="warm-up steps (stage 1 / single stage)")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--prior-epochs", type=int, default=40,
                    help="the prior's epochs as a scene classifier (40: chosen on its val accuracy, 47 %% at 10 -> 68-73 %%)")
    ap.add_argument("--prior-lr", type=float, default=1e-3)
    ap.add_argument("--closed-prior-image-size", type=int, default=96,
                    help="the closed prior trains at this size and is used at 128 px (FixRes, docs/TRAINING.md); the "
                         "open prior's attention pool is tied to its image size, so it trains at 128 px")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="tiny models (the script's own test), not a benchmark")
    ap.add_argument("--readme", action="store_true", help="also replace the README's UCM table")
    ap.add_argument("--note", default="", help="a sentence printed under the table (e.g. how loaded the machine was)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: report the finished runs in --out (a partial report names the rest)")
    ap.add_argument("--reuse", default=None, metavar="JSON",
                    help="a report this script saved (e.g. benchmarks/results_ucm.json): its runs count as finished "
                         "when --out lacks them, if they were trained with the same settings (runs/ is scratch, "
                         "the saved report is what survives a new machine)")
    ap.add_argument("--speed", action="store_true",
                    help="time the subjects instead of training them for the report: each trains on the same "
                         "subset (--speed-images train images, all their captions; 3 passes, the open domain's "
                         "third in stage 2; priors 1 pass) in this one call, from scratch; writes "
                         "benchmarks/results_ucm_speed.json and RESULTS.md's \"UCM training speed\" (run it on an "
                         "otherwise idle machine)")
    ap.add_argument("--speed-images", type=int, default=512, help="train images of --speed (x 5 captions = pairs a pass)")
    ap.add_argument("--results-md", default=None, help="RESULTS.md to update ('' : JSON only)")
    ap.add_argument("--json", default="results_ucm.json", help="file name under benchmarks/ for the figures")
    ap.add_argument("--speed-json", default="results_ucm_speed.json", help="the same for --speed")
    args = ap.parse_args(argv)
    if not 0 <= args.stage2_epochs < args.epochs:
        ap.error(f"--stage2-epochs must be in [0, --epochs), got {args.stage2_epochs}")
    if args.speed_images < 1:
        ap.error(f"--speed-images must be >= 1 (train images timed), got {args.speed_images}")
    if args.ablation_seeds is None:
        args.ablation_seeds = args.seeds[:1]
    return args


# ---- training one subject -------------------------------------------------------------------

def _common(args, seed: int) -> dict:
    data = Path(args.data)
    return {"data": {"path": str(data / "dataset.json"), "labels": f"csv:{data / 'labels.csv'}", "captions": "all"},
            "batch_size": args.batch_size, "workers": args.workers, "seed": seed, "device": "cpu",
            "precision": "fp32", "tensorboard": False, "log_every": 20, "weight_decay": args.weight_decay,
            # a killed run continues from its last checkpoint (at most SAVE_EVERY steps lost)
            "save_every_steps": SAVE_EVERY}


def train_prior(args, seed: int, kind: str) -> Path:
    """The seed's prior of `kind` ("open" | "closed"), trained once as a scene classifier."""
    run = Path(args.out) / str(seed) / f"prior-{kind}"
    if (run / "test_best.json").is_file():
        import yaml

        trained = yaml.safe_load((run / "config.yaml").read_text()).get("epochs")
        if trained != args.prior_epochs:
            raise SystemExit(f"{run} holds a prior trained for {trained} epochs, not --prior-epochs "
                             f"{args.prior_epochs}: use another --out, or the same --prior-epochs")
    else:
        if kind == "open":
            model, overrides = "priorclip-open-small", model_overrides("OPEN", args.tiny)
        else:
            model, overrides = "priorclip-closed-small", model_overrides("CLOSED", args.tiny)
            if not args.tiny:
                overrides["vision_cfg"]["image_size"] = args.closed_prior_image_size
        recipe = {**_common(args, seed), "stage": "prior", "model": model, "model_overrides": overrides,
                  "epochs": args.prior_epochs, "lr": args.prior_lr, "weight_decay": 0.05, "warmup_steps": 20}
        _train(recipe, run)
    return run


def _train(recipe: dict, run: Path) -> None:
    """Train `recipe` into `run`; an interrupted run continues exactly from its last checkpoint
    (the trainer's resume), a run directory without one is started again from nothing."""
    import shutil

    from priorclip.training import train
    from priorclip.training.checkpointing import TRAIN_STATE, find_checkpoint
    from priorclip.training.recipe import recipe_from_dict

    last = find_checkpoint(run / "checkpoints" / "last") if run.exists() else None
    if last is not None and (last / TRAIN_STATE).is_file():
        print(f"   resuming {run} from its last checkpoint", flush=True)
        train(resume=run)
        return
    if run.exists():
        shutil.rmtree(run)
    train(recipe_from_dict(recipe), out_dir=run)


def stage_epochs(args, stage: dict) -> int:
    """Epochs of one stage of a chain: all of --epochs, or its stage-1 / stage-2 share."""
    return {"all": args.epochs, "stage1": args.epochs - args.stage2_epochs, "stage2": args.stage2_epochs}[stage["epochs"]]


def chain_runs(args, seed: int, key: str) -> list[tuple[dict, Path, int]]:
    """(stage, run directory, epochs) of each stage a subject trains (a stage of 0 epochs is left out)."""
    chain, base = SUBJECTS[key]["chain"], Path(args.out) / str(seed) / key
    runs = [(st, base if len(chain) == 1 else base / f"stage{i + 1}", stage_epochs(args, st))
            for i, st in enumerate(chain)]
    return [r for r in runs if r[2]]


def run_chain(args, seed: int, key: str, spec: dict) -> dict:
    """Our trainer through the subject's stages; the last stage's val-selected checkpoint is the result."""
    prior = None
    if spec.get("prior"):
        prior = train_prior(args, seed, spec["prior"]) if spec.get("trained_prior", True) else None
    stages, init = [], None
    for st, run, n_epochs in chain_runs(args, seed, key):
        if not (run / "test_best.json").is_file():
            recipe = {**_common(args, seed), "stage": st["stage"], "epochs": n_epochs,
                      "affiliation_weight": st["affiliation"]}
            if st["stage"] == "finetune":
                recipe.update(init_checkpoint=str(init), lr=args.stage2_lr, warmup_steps=0)
            else:
                recipe.update(model=st["model"], model_overrides=model_overrides(st["overrides"], args.tiny), lr=args.lr,
                              warmup_steps=args.warmup)
                if prior is not None:
                    recipe["prior_checkpoint"] = str(prior)
                elif spec.get("prior") and st["model"].startswith("priorclip-open"):
                    # untrained prior: random, but frozen like a trained one
                    recipe["model_overrides"]["vision_cfg"]["prior_frozen"] = True
            _train(recipe, run)
        stages.append(_stage_figures(run))
        init = run / "checkpoints" / "best"
    result = {"subject": key, "trainer": "priorclip", "test": json.loads((run / "test_best.json").read_text()),
              "stages": stages, "train_s": sum(s["train_s"] for s in stages),
              "wall_s": sum(s["wall_s"] for s in stages), "pairs_seen": sum(s["pairs"] for s in stages),
              # the most any stage trains (stage 1; stage 2 freezes the prior and the text tower)
              "params_trainable": max(s["params_trainable"] for s in stages)}
    if prior is not None:
        result["prior"] = _prior_figures(prior)
    result["pairs_per_s"] = sum(s["pairs_timed"] for s in stages) / max(result["train_s"], 1e-9)
    return result


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _epochs(log: list[dict]) -> list[dict]:
    """The epoch records of a run's log, the last of each epoch (a resumed run may repeat one)."""
    return list({r["epoch"]: r for r in log if r["event"] == "epoch"}.values())


def _wall_s(log: list[dict]) -> float:
    """Seconds of the processes that trained a run: each from its start/resume line to its last
    line (an interrupted process's time after its last line is not counted)."""
    segments = [[]]
    for r in log:
        if r["event"] in ("start", "resume") and segments[-1]:
            segments.append([])
        segments[-1].append(r["time"])
    return sum(seg[-1] - seg[0] for seg in segments if seg)


def _stage_figures(run: Path) -> dict:
    """Pairs, training seconds (validation excluded), wall seconds and trained parameters of one
    run, from its log. A run resumed mid-epoch trained the epoch's first pairs in a process that was
    killed: they count in `pairs` but not in `pairs_timed`, the pairs `train_s` covers."""
    import yaml

    log = _log(run)
    epochs = _epochs(log)
    start = next(r for r in log if r["event"] in ("start", "resume"))
    timed = sum(r["samples"] for r in epochs)
    return {"run": str(run), "stage": yaml.safe_load((run / "config.yaml").read_text())["stage"],
            "epochs": len(epochs), "pairs": timed + sum(r.get("samples_before_resume", 0) for r in epochs),
            "pairs_timed": timed, "train_s": sum(r["train_s"] for r in epochs), "wall_s": _wall_s(log),
            "val_scores": [r.get("val_score") for r in epochs], "params_trainable": start["params_trainable"]}


def _prior_figures(prior: Path) -> dict:
    epochs = _epochs(_log(prior))
    return {"run": str(prior), "test_accuracy": json.loads((prior / "test_best.json").read_text())["accuracy"],
            "train_s": sum(r["train_s"] for r in epochs),
            "images_seen": sum(r["samples"] + r.get("samples_before_resume", 0) for r in epochs)}


def train_flops_per_pair(args, key: str, batch: int = 4) -> float:
    """FLOPs of one training pair of a subject: forward + backward of what trains, forward of a
    frozen prior, no text tower in stage 2 (its embeddings are cached), averaged over the stages by
    their epochs. The FLOP bound of a pairs/s ratio is the inverse ratio of these."""
    import torch

    import priorclip.models as pm
    from flops import count_flops

    spec = SUBJECTS[key]
    first = spec.get("chain", ({"model": "priorclip-open-baseline-small", "overrides": spec.get("model"),
                                "epochs": "all"},))
    model = pm.create_model(first[0]["model"], **model_overrides(first[0]["overrides"], args.tiny))
    if hasattr(model, "set_prior_frozen"):
        model.set_prior_frozen(True)
    model.train()
    size = model.model_config["vision_cfg"].get("image_size", 224)
    images = torch.randn(batch, 3, size, size)
    tokens = model.tokenize(["a few planes are parked beside the terminal of an airport"] * batch)

    def step(text_trains: bool):
        img = model.encode_image(images, normalize=True)
        if text_trains:
            txt = model.encode_text(tokens, normalize=True)
        else:
            txt = torch.nn.functional.normalize(torch.randn(batch, img.shape[1]), dim=-1)
        (img @ txt.t()).sum().backward()

    weights = [(st, stage_epochs(args, st)) for st in first]
    total = sum(n * count_flops(lambda: step(st.get("stage") != "finetune")) for st, n in weights if n)
    return total / sum(n for _, n in weights) / batch


def finished(args, seed: int, key: str) -> bool:
    """Whether the subject's run of `seed` is complete in --out (read back, not trained, by run_subject)."""
    if SUBJECTS[key].get("trainer") == "open_clip_train":
        return (Path(args.out) / str(seed) / key / "result.json").is_file()
    return (chain_runs(args, seed, key)[-1][1] / "test_best.json").is_file()


def run_subject(args, seed: int, key: str) -> dict:
    spec = SUBJECTS[key]
    t0 = time.perf_counter()
    if spec.get("trainer") == "open_clip_train":
        from open_clip_subject import run_open_clip_train

        res = run_open_clip_train(Path(args.data), Path(args.out) / str(seed) / key,
                                  model_overrides(spec["model"], args.tiny), seed=seed, epochs=args.epochs,
                                  batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                                  weight_decay=args.weight_decay, workers=args.workers)
        res = {**res, "trainer": "open_clip_train", "wall_s": res["train_s"] + res["eval_s"]}
    else:
        res = run_chain(args, seed, key, spec)
    res["seconds_this_call"] = round(time.perf_counter() - t0, 1)
    return res


# the settings a saved run must share to be reused in this report (--data is a path that moves between machines)
TRAINING_ARGS = ("epochs", "stage2_epochs", "batch_size", "lr", "stage2_lr", "warmup", "weight_decay",
                 "prior_epochs", "prior_lr", "closed_prior_image_size", "tiny")


def reused_runs(args) -> dict[tuple[str, int], dict]:
    """{(subject, seed): result} of the report --reuse names, after checking it trained like this call."""
    if not args.reuse:
        return {}
    path = Path(args.reuse)
    try:
        saved = json.loads(path.read_text())
        their, results = saved["args"], saved["results"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--reuse {path}: not a report saved by this script ({e})")
    differ = [f"{k} {their.get(k)!r} (here {getattr(args, k)!r})" for k in TRAINING_ARGS if their.get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--reuse {path}: its runs were trained with other settings: {', '.join(differ)}")
    return {(key, int(seed)): res for key, by_seed in results.items() if key in SUBJECTS for seed, res in by_seed.items()}


# ---- the report -----------------------------------------------------------------------------

def _mr(res: dict) -> float:
    return res["test"]["expected"]["mr"]


def summarise(results: dict[str, dict[int, dict]]) -> dict:
    """Per subject: test mR per seed, mean and sd; pairs/s; trainable parameters."""
    out = {}
    for key, by_seed in results.items():
        mrs = [_mr(r) for _, r in sorted(by_seed.items())]
        out[key] = {"seeds": sorted(by_seed), "mr": mrs, "mean": statistics.fmean(mrs),
                    "sd": statistics.stdev(mrs) if len(mrs) > 1 else None,
                    "pairs_seen": sorted({r["pairs_seen"] for r in by_seed.values()}),
                    "pairs_per_s": statistics.fmean(r["pairs_per_s"] for r in by_seed.values()),
                    "wall_s": statistics.fmean(r["wall_s"] for r in by_seed.values()),
                    "params_trainable": by_seed[min(by_seed)]["params_trainable"]}
    return out


def missing_runs(args, results) -> list[str]:
    """Main rows x seeds, ablations x ablation seeds, that this report lacks."""
    want = [(key, seed) for key, spec in SUBJECTS.items()
            for seed in (args.seeds if spec["group"] == "main" else args.ablation_seeds)]
    return [f"{key} seed {seed}" for key, seed in want if seed not in results.get(key, {})]


def markdown(args, results, summary) -> tuple[str, str]:
    """(the whole report for RESULTS.md, its head -- summary and comparison -- for the README)."""
    from priorclip.evaluation.metrics import format_recall_table

    missing = missing_runs(args, results)
    lines = [
        f"**Partial run**: {len(missing)} of the benchmark's runs {'is' if len(missing) == 1 else 'are'} not in this report yet "
        f"({', '.join(missing)}); `run.py` with the same `--out` adds them without retraining the others.",
        "",
    ] if missing else []
    lines += [
        f"`benchmarks/ucm_from_scratch/run.py`: UCM-captions `dataset.json` test split (210 images, 1,050 captions); "
        f"every subject trained from random weights on the train split with the same pairs "
        f"({_pairs_text(summary)}: {args.epochs} passes over every (image, caption) pair, batch {args.batch_size}), "
        f"lr {args.lr} (stage 2: {args.stage2_lr}), warm-up {args.warmup}, weight decay {args.weight_decay}, fp32, "
        f"each selected on val mR (every epoch), tie rule `expected`. Priors: a scene classifier trained "
        f"{args.prior_epochs} epochs on the train split's images and labels, then frozen.",
        "",
        "| subject | seeds | test mR per seed | mean ± sd | trained params | pairs/s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key, s in summary.items():
        sd = f" ± {s['sd']:.2f}" if s["sd"] is not None else ""
        lines.append(f"| {SUBJECTS[key]['name']} | {', '.join(map(str, s['seeds']))} | "
                     f"{' / '.join(f'{m:.2f}' for m in s['mr'])} | **{s['mean']:.2f}**{sd} | "
                     f"{s['params_trainable'] / 1e6:.2f} M | {s['pairs_per_s']:.1f} |")
    ref = summary.get("open_clip_train")
    if ref:
        lines += ["", "Against open_clip_train, same seed (mR difference per seed, then mean):", ""]
        for key, s in summary.items():
            if key == "open_clip_train":
                continue
            pairs = [(seed, m - ref["mr"][ref["seeds"].index(seed)]) for seed, m in zip(s["seeds"], s["mr"])
                     if seed in ref["seeds"]]
            if pairs:
                lines.append(f"- {SUBJECTS[key]['name']}: " + ", ".join(f"seed {sd} {d:+.2f}" for sd, d in pairs)
                             + f"; mean {statistics.fmean(d for _, d in pairs):+.2f}")
    if args.note:
        lines += ["", args.note]
    head = len(lines)
    lines += ["", "Full tables (first seed of each subject; `[min–max]` where tied captions allow several answers):", ""]
    first = {key: by_seed[min(by_seed)] for key, by_seed in results.items()}
    header = format_recall_table(next(iter(first.values()))["test"]).splitlines()[:2]
    lines += ["| subject " + header[0], "|---" + header[1]]
    for key, res in first.items():
        lines.append(f"| {SUBJECTS[key]['name']} (seed {min(results[key])}) " + format_recall_table(res["test"]).splitlines()[-1])
    priors = {(seed, r["prior"]["run"]): r["prior"] for by_seed in results.values() for seed, r in by_seed.items()
              if "prior" in r}
    if priors:
        lines += ["", "Priors (scene classifiers, test accuracy): " + "; ".join(
            f"{Path(run).name} seed {seed} {p['test_accuracy']:.1f} % ({p['train_s']:.0f} s)"
            for (seed, run), p in sorted(priors.items()))]
    lines += ["", "Wall time per subject (mean over its seeds; training + validation every epoch): " + "; ".join(
        f"{key} {s['wall_s'] / 60:.1f} min" for key, s in summary.items()), ""]
    if ref:
        lines += ["Training cost against open_clip_train (pairs/s: training loop only, data loading included, "
                  "validation excluded; FLOPs per pair counted with FlopCounterMode; the FLOP bound of the pairs/s "
                  "ratio is open_clip_train's FLOPs per pair over the subject's; efficiency = ratio / bound):", "",
                  *cost_table(summary), ""]
    return "\n".join(lines), "\n".join(lines[:head] + ["", "Full tables, priors and training cost: "
                                                       "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)."])


def cost_table(summary: dict) -> list[str]:
    """Markdown rows of pairs/s against open_clip_train's beside the FLOP bound of that ratio."""
    ref = summary["open_clip_train"]
    lines = ["| subject | pairs/s | GFLOP / pair | pairs/s ratio | FLOP bound | efficiency |", "|---|---:|---:|---:|---:|---:|"]
    for key, s in summary.items():
        ratio, bound = s["pairs_per_s"] / ref["pairs_per_s"], ref["gflop_per_pair"] / s["gflop_per_pair"]
        lines.append(f"| {SUBJECTS[key]['name']} | {s['pairs_per_s']:.1f} | {s['gflop_per_pair']:.2f} | "
                     f"{ratio:.2f} | {bound:.2f} | {ratio / bound:.2f} |")
    return lines


# ---- --speed: every subject timed in one call --------------------------------------------------

SPEED_EVAL_IMAGES = 16  # val and test images of the timing subset (scored, but not timed)


def speed_data(src: Path, dst: Path, train_images: int) -> Path:
    """A subset of the dataset for timing: `train_images` train images spread evenly over the file
    (so over the scene classes) with all their captions, 16 val and 16 test images; the images
    folder and labels.csv are linked, not copied."""
    data = json.loads((src / "dataset.json").read_text())
    chosen = []
    for split, n in (("train", train_images), ("val", SPEED_EVAL_IMAGES), ("test", SPEED_EVAL_IMAGES)):
        ims = [im for im in data["images"] if im.get("split") in ((split, "restval") if split == "train" else (split,))]
        n = min(n, len(ims))
        chosen += [ims[i * len(ims) // n] for i in range(n)]
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "dataset.json").write_text(json.dumps({**data, "images": chosen}))
    for name in ("images", "labels.csv"):
        if not (dst / name).exists():
            (dst / name).symlink_to((src / name).resolve())
    return dst


def speed(args) -> dict:
    """Every subject of --subjects trained from scratch on one subset in this call; their pairs/s
    against open_clip_train's beside the FLOP bound (what `markdown` reports for the long runs,
    whose timings come from whatever else ran beside them)."""
    import shutil

    from results_md import save_results

    work = Path(args.out) / "speed"
    if (work / "runs").exists():
        shutil.rmtree(work / "runs")  # timed afresh: never read back from an earlier call
    data = speed_data(Path(args.data), work / "data", args.speed_images)
    sargs = argparse.Namespace(**{**vars(args), "data": str(data), "out": str(work / "runs"), "epochs": 3,
                                  "stage2_epochs": 1, "prior_epochs": 1})
    load_start = [round(x, 2) for x in os.getloadavg()]
    summary = {}
    for key in args.subjects:
        print(f"== timing {SUBJECTS[key]['name']}", flush=True)
        res = run_subject(sargs, args.seeds[0], key)
        summary[key] = {"pairs_per_s": res["pairs_per_s"], "pairs_seen": res["pairs_seen"],
                        "params_trainable": res["params_trainable"], "gflop_per_pair": train_flops_per_pair(args, key) / 1e9}
        print(f"   {res['pairs_per_s']:.1f} pairs/s", flush=True)
    load_end = [round(x, 2) for x in os.getloadavg()]
    pairs = sorted({s["pairs_seen"] for s in summary.values()})
    lines = [f"`benchmarks/ucm_from_scratch/run.py --speed --speed-images {args.speed_images}`: every subject trained "
             f"from scratch in one call on the same subset of the UCM train split ({args.speed_images} images x 5 "
             f"captions, 3 passes, the open domain's third in stage 2: {' / '.join(f'{p:,}' for p in pairs)} pairs; "
             f"batch {args.batch_size}, fp32, seed {args.seeds[0]}), each after the one before, priors trained 1 pass "
             f"first (not timed). pairs/s: pairs / seconds in the training loop (data loading included; model "
             f"building, validation and checkpoint writes excluded; open_clip_train's from its own log). Load "
             f"average (1/5/15 min) at the start {load_start}, at the end {load_end}, on "
             f"{os.cpu_count()} cores.", ""]
    if "open_clip_train" in summary:
        lines += cost_table(summary)
    else:
        lines += [f"- {SUBJECTS[k]['name']}: {s['pairs_per_s']:.1f} pairs/s" for k, s in summary.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    figures = {"args": vars(args), "load_average_start": load_start, "load_average_end": load_end, "summary": summary}
    save_results(args.speed_json, figures, "## UCM training speed", text, "benchmarks/ucm_from_scratch/run.py --speed",
                 markdown=args.results_md)
    return figures


def _pairs_text(summary) -> str:
    pairs = sorted({p for s in summary.values() for p in s["pairs_seen"]})
    return " / ".join(f"{p:,}" for p in pairs) + " pairs"


def write_readme(text: str, path: Path = ROOT / "README.md") -> None:
    readme = path.read_text()
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {README_START} ... {README_END} block to replace")
    new = readme[:start + len(README_START)] + "\n" + text.strip() + "\n" + readme[end:]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    tmp.replace(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.speed:
        speed(args)
        return
    from results_md import save_results

    reused = reused_runs(args)
    results: dict[str, dict[int, dict]] = {}
    for seed in args.seeds if args.seeds else []:
        for key in args.subjects:
            if SUBJECTS[key]["group"] != "main" and seed not in args.ablation_seeds:
                continue
            done = finished(args, seed, key)
            if args.report_only and not done and (key, seed) not in reused:
                continue
            print(f"== seed {seed}: {SUBJECTS[key]['name']}", flush=True)
            if not done and (key, seed) in reused:
                res = reused[key, seed]
                print(f"   read back from {args.reuse}", flush=True)
            else:
                res = run_subject(args, seed, key)
            results.setdefault(key, {})[seed] = res
            print(f"   test mR {_mr(res):.2f}, {res['pairs_seen']:,} pairs, {res['pairs_per_s']:.1f} pairs/s", flush=True)
    if not results:
        raise SystemExit("nothing to do: no subject for the seeds given")
    summary = summarise(results)
    for key in summary:
        summary[key]["gflop_per_pair"] = train_flops_per_pair(args, key) / 1e9
    text, short = markdown(args, results, summary)
    print(text)
    figures = {"args": vars(args), "summary": summary, "load_average_end": [round(x, 2) for x in os.getloadavg()],
               "results": {k: {str(s): r for s, r in v.items()} for k, v in results.items()}}
    save_results(args.json, figures, "## UCM-captions from scratch", text, "benchmarks/ucm_from_scratch/run.py",
                 markdown=args.results_md)
    if args.readme:  # a partial report says so in its first line (missing_runs)
        write_readme(short)


if __name__ == "__main__":
    main()
