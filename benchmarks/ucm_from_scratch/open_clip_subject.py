"""open_clip's own trainer (`open_clip_train.main`, open_clip_torch 3.3.0, unmodified) as a benchmark
subject, scored exactly like our trainer's runs.

Why: the UCM benchmark compares trainers at equal budget; open_clip_train is the reference trainer
of the library our open-domain models are built on, so it is the subject to beat (or match).

What `run_open_clip_train` does, in `out_dir`:

1. `train.tsv`: every (image, caption) pair of the train split (UCM: 1,680 x 5 = 8,400 rows), read
   with `KarpathyCaptions` so image paths resolve exactly as ours do (absolute paths), tab-separated
   with columns `filepath` and `title` (open_clip_train's defaults for --csv-img-key,
   --csv-caption-key, --csv-separator). The file is read back with pandas the way open_clip_train's
   `CsvDataset` reads it; captions pandas would change (an empty one becomes "nan") are counted in
   the result (`csv_captions_changed`) and logged.
2. `open_clip_model/priorclip-bench-subject.json`: the model config (our keys `architecture`,
   `image_cfg`, `name` stripped). It is registered by a three-line launcher run as the subprocess
   (`python -c LAUNCHER CONFIG ARGS`: `open_clip.add_model_config(CONFIG)`, then
   `open_clip_train.main.main(ARGS)`), not by open_clip's `local-dir:` model schema, because
   `local-dir:` also loads any *.safetensors/*.bin/*.pth it finds in that folder as pretrained
   weights and warns when there is none; and because `python -m open_clip_train.main` exits 0 when
   `main()` gives up (it returns -1, e.g. "Experiment already exists"), while the launcher passes
   that on as a non-zero exit status. Nothing in the installed package is modified.
3. The trainer, on the CPU, fp32, no validation data (we score ourselves), a checkpoint per epoch
   (`logs/run/checkpoints/epoch_N.pt`), stdout and stderr in `open_clip_train.log`. Flags:
   --train-data train.tsv --dataset-type csv --csv-separator TAB --csv-img-key filepath
   --csv-caption-key title --model priorclip-bench-subject --epochs --batch-size --lr --wd --beta1
   --beta2 --eps --warmup --lr-scheduler cosine --precision fp32 --workers --seed --save-frequency 1
   --zeroshot-frequency 0 --report-to '' --logs out_dir/logs --name run --device cpu
   --image-mean/--image-std (the values our evaluation normalises with: the config's
   image_cfg, else OpenAI's, which is also open_clip's default). The image size and context length
   come from the config.
4. Every epoch checkpoint scored on val with our evaluator (`evaluate_model`, called as
   `Trainer.evaluate` calls it; score = expected-tie-rule mR) on `priorclip.create_model` of the
   same config (an `OpenCLIPBaseline`: open_clip's `CLIP` with identical parameter names, so the
   state dict loads strictly); the best epoch (first on ties) scored on test; the other epoch
   checkpoints deleted.

Resumable: a finished `result.json` is returned as it is (when it was made with the same settings;
otherwise an error says so); a finished training (`train.json` + every checkpoint) is scored
without training again.

Caveats of the subject, kept on purpose (they are open_clip_train's behaviour, which is what is
measured): its augmentation is RandomResizedCrop(scale 0.9-1) only (ours adds flips and
RandAugment); data order comes from the torch global RNG re-seeded with --seed after the model is
built (`shuffle=True`), so it is deterministic but not our order; the last incomplete batch of an
epoch is dropped (`drop_last=True` in `get_csv_dataset`); each step sees one caption per row, so
every caption of every image once per epoch. `train_s` is the subprocess's wall time (imports,
model build and checkpoint writes included); `loop_s` is the time its training loop logged (each log
window's mean step time x its steps, data loading included), what our trainer's `train_s` counts,
so `pairs_per_s` (pairs / `loop_s`) compares the two trainers' loops.

    .venv/bin/python benchmarks/ucm_from_scratch/open_clip_subject.py --data ../shared/data/ucm-captions \\
        --out runs/open_clip_subject --epochs 1 --model-config priorclip-open-baseline-small

Needs pandas (open_clip_train imports it): `pip install -e .[bench]`.
"""
from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from priorclip.errors import ConfigError, PriorCLIPError

ROOT = Path(__file__).resolve().parents[2]
SUBJECT = "open_clip_train"
MODEL_NAME = "priorclip-bench-subject"  # the name the config is registered under in the subprocess
BASE_MODEL = "priorclip-open-baseline-small"  # our model class that scores the checkpoints
RUN_NAME = "run"
OUR_KEYS = ("architecture", "image_cfg", "name")  # our config keys open_clip does not know
SCORED_KEYS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")  # what OpenCLIPBaseline builds
LAUNCHER = ("import sys, open_clip\n"
            "open_clip.add_model_config(sys.argv.pop(1))\n"
            "from open_clip_train.main import main\n"
            "sys.exit(main(sys.argv[1:]) or 0)\n")
LOG_TAIL_LINES = 30

log = logging.getLogger(__name__)


class SubjectError(PriorCLIPError, RuntimeError):
    """open_clip_train could not run or failed; the message names its log file."""


def run_open_clip_train(data_dir: Path, out_dir: Path, model_cfg: dict, *, seed: int, epochs: int,
                        batch_size: int, lr: float, warmup: int, weight_decay: float = 0.1,
                        betas=(0.9, 0.98), eps: float = 1e-6, workers: int = 2,
                        python: str = sys.executable) -> dict:
    """Train with open_clip_train on the train split of `data_dir`, select on val mR, report test.

    `model_cfg`: an open_clip model config (embed_dim, vision_cfg, text_cfg, optional quick_gelu;
    our `architecture`/`name` are ignored and `image_cfg` mean/std are passed to both sides).
    Returns (and writes to out_dir/result.json) the subject's figures; see the module docstring.
    """
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    settings = {"data_dir": str(data_dir), "model_cfg": model_cfg, "seed": seed, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "warmup": warmup, "weight_decay": weight_decay,
                "betas": list(betas), "eps": eps, "workers": workers}
    result_path = out_dir / "result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        _check_same_settings(result_path, result.get("settings"), settings)
        _delete_other_checkpoints(out_dir, result["best_epoch"])  # in case a run stopped right after writing it
        return result

    if epochs < 1 or batch_size < 1 or workers < 0:
        raise ConfigError(f"epochs ({epochs}) and batch_size ({batch_size}) must be >= 1, workers ({workers}) >= 0")
    oc_cfg, config = _configs(model_cfg)
    model = _our_model(config)  # an impossible config fails here, before a long training
    _require_pandas(python)
    out_dir.mkdir(parents=True, exist_ok=True)

    train = _train(data_dir, out_dir, oc_cfg, config, settings, python)
    t0 = time.perf_counter()
    val_ds, test_ds = (_split(data_dir, split) for split in ("val", "test"))
    val_scores = []
    for epoch in range(1, epochs + 1):
        _load_checkpoint(model, _checkpoint(out_dir, epoch))
        val_scores.append(_evaluate(model, val_ds, workers)["expected"]["mr"])
        log.info("open_clip_train epoch %d: val mR %.2f", epoch, val_scores[-1])
    best = max(range(epochs), key=lambda i: (val_scores[i], -i)) + 1  # first best on ties
    _load_checkpoint(model, _checkpoint(out_dir, best))
    test = _evaluate(model, test_ds, workers)
    eval_s = time.perf_counter() - t0

    import open_clip

    rows, train_s = train["rows"], round(train["train_s"], 2)
    pairs_seen = epochs * (rows // batch_size) * batch_size  # open_clip_train drops the last incomplete batch
    loop_s = loop_seconds(out_dir / "open_clip_train.log", batch_size)
    result = {"subject": SUBJECT, "test": test, "val_scores": val_scores, "best_epoch": best,
              "train_s": train_s, "loop_s": loop_s, "eval_s": round(eval_s, 2), "pairs_seen": pairs_seen,
              "pairs_per_s": round(pairs_seen / (loop_s or train_s), 2), "rows": rows,
              "csv_captions_changed": train["csv_captions_changed"],
              "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "argv": train["argv"], "open_clip_version": open_clip.__version__,
              "checkpoint": str(_checkpoint(out_dir, best)), "log": str(out_dir / "open_clip_train.log"),
              "settings": settings}
    _write_json(result_path, result)
    _delete_other_checkpoints(out_dir, best)
    return result


# ---- configuration --------------------------------------------------------------------------

def _configs(model_cfg: dict) -> tuple[dict, dict]:
    """-> (the open_clip config, our full config for the same model)."""
    import priorclip.models as pm
    from priorclip.models.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    unknown = sorted(set(model_cfg) - set(SCORED_KEYS) - set(OUR_KEYS))
    if missing or unknown:
        raise ConfigError(f"model_cfg: missing keys {missing}, unscorable keys {unknown}; the checkpoints are "
                          f"scored with priorclip's OpenCLIPBaseline, which builds {list(SCORED_KEYS)} only")
    oc_cfg = {k: copy.deepcopy(v) for k, v in model_cfg.items() if k not in OUR_KEYS}
    config = pm.get_model_config(BASE_MODEL)
    for key in ("vision_cfg", "text_cfg", "quick_gelu"):
        config.pop(key, None)  # replaced whole, never merged: every key open_clip sees and no other
    config.update(copy.deepcopy(oc_cfg))
    icfg = model_cfg.get("image_cfg") or {}
    config["image_cfg"] = {"mean": list(icfg.get("mean", OPENAI_DATASET_MEAN)),
                           "std": list(icfg.get("std", OPENAI_DATASET_STD))}
    return oc_cfg, config


def _our_model(config: dict):
    import priorclip.models as pm

    model = pm.create_model(config)
    assert {k: model.model_config.get(k) for k in SCORED_KEYS} == {k: config.get(k) for k in SCORED_KEYS}
    return model


def _check_same_settings(path: Path, have, want: dict) -> None:
    if json.loads(json.dumps(have)) != json.loads(json.dumps(want)):
        diff = sorted(k for k in want if (have or {}).get(k) != json.loads(json.dumps(want[k])))
        raise ConfigError(f"{path} was made with other settings (differ: {diff}); use another out_dir or delete "
                          f"{path.parent} to run again")


def _require_pandas(python: str) -> None:
    """open_clip_train's data module imports pandas at the top: say how to get it before training."""
    if Path(python).resolve() == Path(sys.executable).resolve():
        ok = importlib.util.find_spec("pandas") is not None
    else:
        ok = subprocess.run([python, "-c", "import pandas"], capture_output=True).returncode == 0
    if not ok:
        raise SubjectError(f"open_clip_train needs pandas, which {python} cannot import; "
                           f"install it with `pip install -e .[bench]` (or `pip install pandas`)")


# ---- training -------------------------------------------------------------------------------

def _train(data_dir: Path, out_dir: Path, oc_cfg: dict, config: dict, settings: dict, python: str) -> dict:
    """Run open_clip_train once (or reuse a finished run with the same settings) -> train.json's dict."""
    marker = out_dir / "train.json"
    epochs = settings["epochs"]
    if marker.is_file():
        done = json.loads(marker.read_text())
        _check_same_settings(marker, done.get("settings"), settings)
        if all(_checkpoint(out_dir, e).is_file() for e in range(1, epochs + 1)):
            return done
        marker.unlink()  # checkpoints gone: train again
    csv_path = out_dir / "train.tsv"
    rows, changed = write_train_csv(data_dir, csv_path)
    if settings["batch_size"] > rows:
        raise ConfigError(f"batch_size {settings['batch_size']} exceeds the {rows} training pairs; open_clip_train "
                          "drops the last incomplete batch, so it would train on nothing")
    cfg_path = out_dir / "open_clip_model" / f"{MODEL_NAME}.json"
    cfg_path.parent.mkdir(exist_ok=True)
    cfg_path.write_text(json.dumps(oc_cfg, indent=2) + "\n")
    run_dir = out_dir / "logs" / RUN_NAME
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier run: open_clip_train refuses an existing experiment
    argv = [python, "-c", LAUNCHER, str(cfg_path), *trainer_args(csv_path, out_dir, config, settings)]
    log_path = out_dir / "open_clip_train.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=out_dir).returncode
    train_s = time.perf_counter() - t0
    missing = [e for e in range(1, epochs + 1) if not _checkpoint(out_dir, e).is_file()]
    if rc != 0 or missing:
        lines = log_path.read_text(errors="replace").splitlines()
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        why = f"exit status {rc}" if rc != 0 else f"no checkpoint for epoch(s) {missing}"
        hint = ("\nopen_clip_train needs pandas: `pip install -e .[bench]`"
                if "No module named 'pandas'" in tail else "")
        raise SubjectError(f"open_clip_train failed ({why}); its log is {log_path}; last lines:\n{tail}{hint}")
    done = {"rows": rows, "csv_captions_changed": changed, "train_s": train_s, "argv": argv, "settings": settings}
    _write_json(marker, done)
    return done


def trainer_args(csv_path: Path, out_dir: Path, config: dict, settings: dict) -> list[str]:
    """open_clip_train's command line (flag names as in open_clip_train/params.py, 3.3.0)."""
    s, icfg = settings, config["image_cfg"]
    return ["--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", "\t",
            "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", MODEL_NAME,
            "--epochs", str(s["epochs"]), "--batch-size", str(s["batch_size"]), "--lr", repr(float(s["lr"])),
            "--wd", repr(float(s["weight_decay"])), "--beta1", repr(float(s["betas"][0])),
            "--beta2", repr(float(s["betas"][1])), "--eps", repr(float(s["eps"])), "--warmup", str(s["warmup"]),
            "--lr-scheduler", "cosine", "--precision", "fp32", "--workers", str(s["workers"]),
            "--seed", str(s["seed"]), "--save-frequency", "1", "--zeroshot-frequency", "0",
            "--report-to", "", "--logs", str(out_dir / "logs"), "--name", RUN_NAME, "--device", "cpu",
            "--image-mean", *map(repr, map(float, icfg["mean"])), "--image-std", *map(repr, map(float, icfg["std"]))]


def write_train_csv(data_dir: Path, path: Path) -> tuple[int, int]:
    """Every (image, caption) pair of the train split as open_clip_train's CSV -> (rows, captions that
    pandas reads back differently, e.g. an empty caption read as NaN)."""
    import pandas as pd

    ds = _split(data_dir, "train")
    want_paths, want_caps = [], []
    for image, caps in zip(ds.paths, ds.image_captions):
        for cap in caps:
            want_paths.append(str(Path(image).resolve()))
            want_caps.append(cap)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["filepath", "title"])
        writer.writerows(zip(want_paths, want_caps))
    tmp.replace(path)
    df = pd.read_csv(path, sep="\t")  # as open_clip_train's CsvDataset reads it
    got_paths, got_caps = df["filepath"].tolist(), [str(c) for c in df["title"].tolist()]
    if got_paths != want_paths or len(got_caps) != len(want_caps):
        raise SubjectError(f"{path}: pandas reads back {len(got_paths)} rows / other image paths than the "
                           f"{len(want_paths)} written; a caption or path breaks the TSV")
    changed = sum(a != b for a, b in zip(got_caps, want_caps))
    if changed:
        log.warning("%s: open_clip_train reads %d caption(s) differently from the dataset (e.g. empty -> 'nan')",
                    path, changed)
    return len(want_paths), changed


# ---- scoring --------------------------------------------------------------------------------

def _split(data_dir: Path, split: str):
    from priorclip.data.karpathy import KarpathyCaptions

    labels = data_dir / "labels.csv"
    return KarpathyCaptions(data_dir / "dataset.json", split=split, mode="images",
                            labels=f"csv:{labels}" if labels.is_file() else None)


def _checkpoint(out_dir: Path, epoch: int) -> Path:
    return out_dir / "logs" / RUN_NAME / "checkpoints" / f"epoch_{epoch}.pt"


def _load_checkpoint(model, path: Path) -> None:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    if next(iter(state)).startswith("module."):  # saved from a DistributedDataParallel model
        state = {k[len("module."):]: v for k, v in state.items()}
    model.load_state_dict(state, strict=True)


def _evaluate(model, dataset, workers: int) -> dict:
    """As `priorclip.training.loop.Trainer.evaluate` scores a contrastive model."""
    import torch

    from priorclip.evaluation.encode import evaluate_model

    with torch.random.fork_rng(devices=[]):
        report = evaluate_model(model, dataset, batch_size=64, device="cpu", workers=min(workers, 2))
    report["score"] = report["expected"]["mr"]
    return report


def _delete_other_checkpoints(out_dir: Path, best: int) -> None:
    folder = _checkpoint(out_dir, best).parent
    for path in folder.glob("epoch_*.pt") if folder.is_dir() else ():
        if path.name != f"epoch_{best}.pt":
            path.unlink()


# open_clip_train's progress line: epoch, samples so far in the epoch, mean step time of the window
_PROGRESS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/\d+ .*?Batch \(t\): ([0-9.]+),")


def loop_seconds(log_path: Path, batch_size: int) -> float | None:
    """Seconds open_clip_train spent in its training loop, from its own log: it prints the mean
    step time (data loading included) over the steps since its previous line, so the windows'
    means x their steps add up to the loop's time. None when the log has no such line."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return None
    total, done = 0.0, {}
    for m in _PROGRESS.finditer(text):
        epoch, steps, mean = int(m[1]), int(m[2]) // batch_size, float(m[3])
        total += mean * (steps - done.get(epoch, 0))
        done[epoch] = steps
    return round(total, 2) if done else None


def _write_json(path: Path, obj) -> None:
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    from results_md import write_json

    write_json(path, obj)


# ---- command line ---------------------------------------------------------------------------

def _model_config(spec: str, image_size: int | None) -> dict:
    """A JSON file or a registered priorclip open-domain baseline name -> open_clip config."""
    import priorclip.models as pm

    path = Path(spec)
    cfg = json.loads(path.read_text()) if path.is_file() else pm.get_model_config(spec)
    if cfg.get("architecture", "open-baseline") != "open-baseline":
        raise ConfigError(f"--model-config {spec}: architecture {cfg['architecture']!r}; open_clip_train trains plain "
                          "CLIP models (priorclip-open-baseline*)")
    if image_size:
        cfg["vision_cfg"]["image_size"] = image_size
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("PRIORCLIP_SHARED_DIR", str(ROOT.parent / "shared")) + "/data/ucm-captions",
                    help="Karpathy-layout dataset folder (dataset.json, images/, optional labels.csv)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "open_clip_subject"),
                    help="run folder; a finished result.json there is printed without running again")
    ap.add_argument("--model-config", default=BASE_MODEL,
                    help="a JSON model config file or a priorclip open-baseline model name")
    ap.add_argument("--image-size", type=int, default=None, help="override vision_cfg.image_size")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=30, help="warmup steps (linear), then cosine decay to 0")
    ap.add_argument("--wd", type=float, default=0.1, help="AdamW weight decay (not on gains, biases, logit_scale)")
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.98)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (training; evaluation uses at most 2)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = run_open_clip_train(Path(args.data), Path(args.out), _model_config(args.model_config, args.image_size),
                                     seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                     warmup=args.warmup, weight_decay=args.wd, betas=(args.beta1, args.beta2),
                                     eps=args.eps, workers=args.workers)
    except PriorCLIPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from priorclip.evaluation.metrics import format_recall_table

    print(format_recall_table(result["test"]))
    print(f"best epoch {result['best_epoch']} (val mR {', '.join(f'{s:.2f}' for s in result['val_scores'])}); "
          f"train {result['train_s']:.0f} s ({result['pairs_per_s']:.1f} pairs/s), scoring {result['eval_s']:.0f} s; "
          f"{result['params_trainable'] / 1e6:.2f} M trainable parameters; {Path(args.out) / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
