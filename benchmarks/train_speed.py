"""Training cost of `priorclip train` (not a test: prints numbers).

Every figure runs the trainer's own code: the recipe is read from `configs/*.yaml` (with the model,
data path, batch size and device overridden), `priorclip.training.loop.Trainer.build()` builds the
model, the frozen-tower caches and the training set exactly as `priorclip train` does, and one
timed step is what `Trainer.fit()` does per optimizer step (`Trainer._loss` under the recipe's
autocast, backward, grad clipping, AdamW, LR scheduler, temperature clamp). Data loading is not
timed: each step reuses one collated batch of the synthetic training set (in `priorclip train` the
DataLoader workers prepare batches beside the step). Random weights; timings do not depend on them.

1. Step time, samples/s and memory for the small models (closed, closed-baseline, open pretrain,
   open finetune), batch 16 by default, each config in a fresh child process. Memory on CPU:
   peak RSS during the steps (VmHWM, reset through /proc/self/clear_refs after building) minus RSS
   after building the model and one batch, divided by the batch size; on CUDA
   max_memory_allocated minus memory_allocated after building, divided by the batch size.
2. DDP scaling on one machine: two processes (gloo on CPU, torchrun's environment), each with half
   the threads and half the global batch, against one process with all threads and the whole batch.
3. Frozen-tower caches in stage-2 `finetune` (configs/finetune.yaml, data.augment false so the prior
   cache applies): step time with no cache, with the text-embedding cache only, and with text and
   prior caches, alternated in one process on the real `priorclip-open` (ViT-B/32 + ModifiedResNet-50
   prior + text transformer) and on `priorclip-open-small`; FLOPs of each part counted with
   FlopCounterMode explain the ratio. Target: cached step <= 0.6 x uncached.

    .venv/bin/python benchmarks/train_speed.py                # ~8 minutes on 2 cores
    .venv/bin/python benchmarks/train_speed.py --quick        # ~3 minutes, fewer steps, smaller batches
    .venv/bin/python benchmarks/train_speed.py --markdown     # also the RESULTS.md section
    .venv/bin/python benchmarks/train_speed.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTION = "## Training step time, memory and DDP scaling"

# (label, recipe file, model): the small configs of figure 1
SMALL_CONFIGS = [
    ("closed-small", "closed.yaml", "priorclip-closed-small"),
    ("closed-baseline-small", "closed-baseline.yaml", "priorclip-closed-baseline-small"),
    ("open-small pretrain", "pretrain.yaml", "priorclip-open-small"),
    ("open-small finetune", "finetune.yaml", "priorclip-open-small"),
]
CACHE_TARGET = 0.6


# ---- measuring helpers ----------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # best effort: a peak, not current
    return kb / 1024


def _peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def _median(xs) -> float:
    return float(statistics.median(xs))


def make_dataset(root: Path, batch: int, image_size: int = 64) -> Path:
    """Synthetic Karpathy dataset with enough training pairs for one batch (2 captions an image)."""
    from priorclip.data.synthetic import generate_synthetic_dataset

    classes = ["airport", "farmland", "beach", "harbor"]
    n_per_class = max(6, math.ceil(batch / (2 * len(classes) * 0.6)) + 2)
    path = generate_synthetic_dataset(root, n_per_class=n_per_class, image_size=image_size, seed=0, classes=classes)
    data = json.loads(path.read_text())
    for im in data["images"]:
        im["sentences"] = im["sentences"][:2]
    path.write_text(json.dumps(data))
    return root


def resolve_precision(precision: str, device: str, recipe_precision: str) -> str:
    """`auto`: the recipe's own precision on CUDA; fp32 on CPU unless it has native bf16 units
    (without them, bf16 autocast is ~20x slower than fp32: docs/PERFORMANCE.md)."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return recipe_precision
    import torch

    cap = torch.backends.cpu.get_cpu_capability().upper()
    return recipe_precision if ("BF16" in cap or "AMX" in cap) else "fp32"


def make_recipe(spec: dict, run_dir: Path):
    """The recipe of configs/<spec.recipe> with the benchmark's overrides (and a random init
    checkpoint for finetune)."""
    import yaml

    import priorclip.models as pm
    from priorclip.training.recipe import recipe_from_dict

    raw = yaml.safe_load((REPO / "configs" / spec["recipe"]).read_text())
    data = {"path": str(spec["data_dir"]), "val_split": None, "test_split": None, "shards": None,
            "epoch_samples": None}
    if spec.get("augment") is not None:
        data["augment"] = spec["augment"]
    over = {"data": data, "batch_size": spec["batch"], "workers": 0, "device": spec["device"], "tensorboard": False,
            "out_dir": str(run_dir), "epochs": 1,
            "precision": resolve_precision(spec.get("precision", "auto"), spec["device"], raw.get("precision", "fp32"))}
    for key in ("cache_prior", "train_all"):
        if key in spec:
            over[key] = spec[key]
    if raw.get("stage") == "finetune":
        import torch

        init = run_dir.parent / f"init-{spec['model']}"
        if not (init / "config.json").is_file():
            torch.manual_seed(0)
            pm.save_checkpoint(pm.create_model(spec["model"], **spec.get("model_overrides", {})), init)
        over["init_checkpoint"] = str(init)
    else:
        over["model"] = spec["model"]
        over["model_overrides"] = spec.get("model_overrides", {})
    return recipe_from_dict(raw, over)


class StepBench:
    """A built Trainer plus what `fit()` sets up before its loop; `step()` is one optimizer step."""

    def __init__(self, spec: dict, run_dir: Path):
        import logging

        import torch
        from torch import nn

        import priorclip.models as pm
        from priorclip.training import data, logger, loop, optim

        logging.getLogger("priorclip.training").setLevel(logging.ERROR)  # e.g. "random prior" warnings
        self.torch, self.optim = torch, optim
        run_dir.mkdir(parents=True, exist_ok=True)
        self.recipe = r = make_recipe(spec, run_dir)
        self.trainer = t = loop.Trainer(r, run_dir)
        t.build()
        t.opt = torch.optim.AdamW(optim.param_groups(t.model, r.weight_decay), lr=r.lr, betas=tuple(r.betas), eps=r.eps)
        t.sched = torch.optim.lr_scheduler.LambdaLR(t.opt, optim.lr_lambda(10_000, r.warmup_steps, r.schedule,
                                                                           r.min_lr_ratio))
        t.scaler = torch.amp.GradScaler(t.device.type, enabled=r.precision == "fp16")
        t.step = 0
        self.text_cache = t._text_cache()
        self.prior_cache = t._prior_cache(logger.Logger(None, False))
        self.loss_fn = pm.PriorCLIPLoss(affiliation_weight=r.affiliation_weight if r.stage == "closed" else 0.0)
        fwd = loop._Forward(t.model, r.stage)
        if t.info.enabled:
            ids = [t.device.index] if t.device.type == "cuda" else None
            fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=ids, find_unused_parameters=True)
        self.fwd = fwd
        self.autocast = {"device_type": t.device.type,
                         "dtype": torch.bfloat16 if r.precision == "bf16" else torch.float16,
                         "enabled": r.precision != "fp32"}
        wrapped = data.SeededSamples(t.train_ds, r.seed, one_caption=r.data.captions == "one")
        idx = data.epoch_batches(len(t.train_ds), r.batch_size, r.seed, 0, t.info)[0]
        self.batch = data.collate([wrapped[i] for i in idx])
        self.batch_size = len(idx)
        t.model.train()

    def _sync(self):
        if self.trainer.device.type == "cuda":
            self.torch.cuda.synchronize(self.trainer.device)

    def step(self, text_cache="recipe", prior_cache="recipe") -> float:
        """One optimizer step as in `Trainer.fit` (grad_accum 1); seconds. The caches default to
        what the recipe gives; pass None to switch one off."""
        torch, t, r = self.torch, self.trainer, self.recipe
        text_cache = self.text_cache if isinstance(text_cache, str) else text_cache
        prior_cache = self.prior_cache if isinstance(prior_cache, str) else prior_cache
        self._sync()
        start = time.perf_counter()
        with torch.autocast(**self.autocast):
            losses = t._loss(self.fwd, self.batch, text_cache, self.loss_fn, prior_cache)
        t.scaler.scale(losses["total"]).backward()
        _ = {k: float(v.detach()) for k, v in losses.items()}
        t.scaler.unscale_(t.opt)
        if r.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in t.opt.param_groups for p in g["params"]], r.grad_clip)
        t.scaler.step(t.opt)
        t.scaler.update()
        t.opt.zero_grad(set_to_none=True)
        t.sched.step()
        self.optim.clamp_temperatures(t.model)
        t.step += 1
        self._sync()
        return time.perf_counter() - start

    def param_counts(self) -> tuple[int, int]:
        ps = list(self.trainer.model.parameters())
        return sum(p.numel() for p in ps), sum(p.numel() for p in ps if p.requires_grad)


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


# ---- figure 1: step time and memory -------------------------------------------------------

def measure_steps(spec: dict, work: Path) -> dict:
    """Step time and memory of one config (meant to run in a fresh process: see run_child)."""
    import torch

    _set_threads(spec.get("threads"))
    cuda = spec["device"].startswith("cuda")
    bench = StepBench(spec, work / "run")
    n_params, n_train = bench.param_counts()
    if cuda:
        torch.cuda.synchronize()
        base_mb = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        reset = True
    else:
        base_mb = _rss_mb()
        reset = _reset_peak_rss()
    for _ in range(spec["warmup"]):
        bench.step()
    secs = [bench.step() for _ in range(spec["steps"])]
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else max(_peak_rss_mb(), base_mb, _rss_mb())  # VmHWM is synced lazily: it can lag the RSS by a few pages
    b = bench.batch_size
    s = _median(secs)
    increment = max(0.0, peak_mb - base_mb)
    state_mb = n_train * 4 * 3 / 2**20  # fp32 gradients + AdamW exp_avg, exp_avg_sq
    return {"name": spec.get("label", spec["model"]), "recipe": spec["recipe"], "model": spec["model"],
            "stage": bench.recipe.stage, "precision": bench.recipe.precision, "batch": b,
            "threads": torch.get_num_threads(), "device": str(bench.trainer.device),
            "params_m": round(n_params / 1e6, 3), "trainable_m": round(n_train / 1e6, 3),
            "text_cache": bench.text_cache is not None, "prior_cache": bench.prior_cache is not None,
            "step_s": round(s, 4), "samples_per_s": round(b / s, 2), "step_s_runs": [round(x, 4) for x in secs],
            "memory": "cuda" if cuda else ("rss-hwm-reset" if reset else "rss-hwm-since-start"),
            "base_mb": round(base_mb, 1), "peak_mb": round(peak_mb, 1), "increment_mb": round(increment, 1),
            "state_mb": round(state_mb, 1), "mb_per_sample": round(increment / b, 2),
            "activation_mb_per_sample": round(max(0.0, increment - state_mb) / b, 2)}


# ---- figure 2: DDP -------------------------------------------------------------------------

def measure_ddp_rank(spec: dict, work: Path) -> dict:
    """One process of a DDP (or single-process) run: median step time over barrier-aligned steps."""
    import torch
    import torch.distributed as dist

    _set_threads(spec.get("threads"))
    bench = StepBench(spec, work / f"run-{spec['mode']}")
    info = bench.trainer.info
    for _ in range(spec["warmup"]):
        bench.step()
    secs = []
    for _ in range(spec["steps"]):
        if info.enabled:
            dist.barrier()
        secs.append(bench.step())
    out = {"rank": info.rank, "world_size": info.world_size, "threads": torch.get_num_threads(),
           "batch_per_process": bench.batch_size, "global_batch": bench.batch_size * info.world_size,
           "step_s": round(_median(secs), 4), "step_s_runs": [round(x, 4) for x in secs]}
    out["samples_per_s"] = round(out["global_batch"] / out["step_s"], 2)
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(threads: int, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra or {})
    return env


def _launch(kind: str, spec: dict, work: Path, env: dict) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / f"spec-{kind}-{env.get('RANK', 's')}.json"
    spec_path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", kind, str(spec_path),
                             str(work)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _collect(procs: list[subprocess.Popen], timeout: float) -> list[dict]:
    outs = []
    for p in procs:
        try:
            text = p.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError(f"benchmark child timed out after {timeout:.0f} s")
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"benchmark child failed (exit {p.returncode}):\n{text[-3000:]}")
        outs.append(json.loads(lines[-1][len("RESULT "):]))
    return outs


def run_child(kind: str, spec: dict, work: Path, threads: int, timeout: float = 900) -> dict:
    """`measure_steps` in a fresh process (so its memory figure is its own)."""
    spec = {**spec, "threads": threads}
    return _collect([_launch(kind, spec, work, _child_env(threads))], timeout)[0]


def measure_ddp(spec: dict, work: Path, threads: int, rounds: int, timeout: float = 900) -> dict:
    """Alternate rounds of one process (all threads, global batch), two gloo processes (half the
    threads, half the batch each) and, as a reference, one process with half the threads and the
    whole batch. ratio = DDP / one process with all threads; efficiency = DDP / (2 x the half-thread
    process): below 1 is what DDP itself costs (gradient all-reduce, feature gathers), apart from how
    well one process uses its threads. CUDA: ranks on cuda:0 and cuda:1."""
    global_batch = spec["batch"]
    if global_batch % 2:
        raise ValueError(f"DDP scaling needs an even global batch, got {global_batch}")
    half = max(1, threads // 2)
    single_runs, half_runs, ddp_runs = [], [], []
    for _ in range(rounds):
        single_runs.append(run_child("ddp", {**spec, "mode": "single"}, work, threads, timeout))
        port = _free_port()
        procs = []
        for rank in range(2):
            env = _child_env(half, {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                    "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
            procs.append(_launch("ddp", {**spec, "mode": "ddp", "batch": global_batch // 2, "threads": half}, work, env))
        ddp_runs.append(_collect(procs, timeout)[0])
        half_runs.append(run_child("ddp", {**spec, "mode": "half"}, work, half, timeout))
    single = _median(r["samples_per_s"] for r in single_runs)
    one_half = _median(r["samples_per_s"] for r in half_runs)
    ddp = _median(r["samples_per_s"] for r in ddp_runs)
    return {"model": spec["model"], "recipe": spec["recipe"], "global_batch": global_batch, "threads_total": threads,
            "threads_per_rank": half, "backend": "nccl" if spec["device"].startswith("cuda") else "gloo",
            "single_samples_per_s": round(single, 2), "ddp_samples_per_s": round(ddp, 2),
            "half_threads_samples_per_s": round(one_half, 2), "ratio": round(ddp / single, 3),
            "efficiency": round(ddp / (2 * one_half), 3), "rounds": rounds,
            "single_runs": single_runs, "ddp_runs": ddp_runs, "half_runs": half_runs}


# ---- figure 3: frozen-tower caches in finetune --------------------------------------------

def _count_flops(fn) -> float:
    """GFLOPs of one call (benchmarks/flops.py)."""
    sys.path.insert(0, str(HERE))
    from flops import count_flops

    return count_flops(fn) / 1e9


def measure_cache(spec: dict, work: Path, flops: bool = True) -> dict:
    """finetune (augment false): steps with no cache / text cache / text + prior caches, alternated
    on one model; plus the time and FLOPs of the parts the caches skip."""
    import torch

    _set_threads(spec.get("threads"))
    bench = StepBench({**spec, "recipe": "finetune.yaml", "augment": False, "cache_prior": True}, work / "run")
    if bench.text_cache is None or bench.prior_cache is None:
        raise RuntimeError("finetune with data.augment false should give both caches; the trainer gave "
                           f"text cache {bench.text_cache is not None}, prior cache {bench.prior_cache is not None}")
    variants = {"none": lambda: bench.step(None, None), "text": lambda: bench.step(bench.text_cache, None),
                "text+prior": lambda: bench.step(bench.text_cache, bench.prior_cache)}
    runs = {k: [] for k in variants}
    for _ in range(spec["warmup"]):
        for fn in variants.values():
            fn()
    for _ in range(spec["steps"]):
        for k, fn in variants.items():
            runs[k].append(fn())
    med = {k: _median(v) for k, v in runs.items()}

    # the parts the caches skip, timed alone (forward only, no graph: both towers are frozen)
    model, dev = bench.trainer.model, bench.trainer.device
    images = bench.batch[0].to(dev)
    tokens = model.tokenize(bench.batch[1]).to(dev)
    parts = {"text_forward": lambda: model.encode_text(tokens, normalize=True),
             "prior_forward": lambda: model.res_visual(images)}
    part_runs = {k: [] for k in parts}
    with torch.no_grad(), torch.autocast(**bench.autocast):
        for fn in parts.values():
            fn()
        for _ in range(max(2, spec["steps"] // 2)):
            for k, fn in parts.items():
                bench._sync()
                t = time.perf_counter()
                fn()
                bench._sync()
                part_runs[k].append(time.perf_counter() - t)
    out = {"model": spec["model"], "batch": bench.batch_size, "precision": bench.recipe.precision,
           "threads": torch.get_num_threads(), "device": str(dev),
           "step_s": {k: round(v, 4) for k, v in med.items()},
           "step_s_runs": {k: [round(x, 4) for x in v] for k, v in runs.items()},
           "ratio_text": round(med["text"] / med["none"], 3),
           "ratio_cached": round(med["text+prior"] / med["none"], 3),
           "parts_s": {k: round(_median(v), 4) for k, v in part_runs.items()},
           "target": CACHE_TARGET}
    out["target_met"] = out["ratio_cached"] <= CACHE_TARGET
    if flops:
        def fwd_bwd(text_cache, prior_cache):
            with torch.autocast(**bench.autocast):
                losses = bench.trainer._loss(bench.fwd, bench.batch, text_cache, bench.loss_fn, prior_cache)
            losses["total"].backward()
            bench.trainer.opt.zero_grad(set_to_none=True)

        with torch.no_grad():
            f_text = _count_flops(parts["text_forward"])
            f_prior = _count_flops(parts["prior_forward"])
        f_none = _count_flops(lambda: fwd_bwd(None, None))
        f_cached = _count_flops(lambda: fwd_bwd(bench.text_cache, bench.prior_cache))
        out["gflops"] = {"step_none": _sig(f_none), "step_cached": _sig(f_cached),
                         "text_forward": _sig(f_text), "prior_forward": _sig(f_prior)}
        out["flop_ratio"] = round(f_cached / f_none, 3)
        # how fast each part runs: the FLOP ratio is only the time ratio if they run equally fast
        out["gflop_per_s"] = {"step_none": round(f_none / med["none"], 1),
                              "step_cached": round(f_cached / med["text+prior"], 1),
                              "text_forward": round(f_text / out["parts_s"]["text_forward"], 1),
                              "prior_forward": round(f_prior / out["parts_s"]["prior_forward"], 1)}
    return out


# ---- report ---------------------------------------------------------------------------------

def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by all processes over the next `seconds` (from /proc/stat; None elsewhere).
    Unlike the 1-minute load average, it does not still count a job that ended a minute ago."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def _load_note(load: float, busy: float | None) -> str:
    """Say so when other work was running: contended cores distort absolute times (and a process with
    several OpenMP threads loses more to it than single-threaded ones)."""
    if (busy if busy is not None else load) < 0.5:
        return ("The machine was otherwise idle at the start"
                + (f" ({busy:.2f} cores busy over 1 s; the 1-minute load average, {load:.1f}, still counted work "
                   "that had just ended)." if busy is not None and load >= 0.5 else "."))
    busy_note = f"{busy:.1f} cores busy over 1 s, " if busy is not None else ""
    return (f"Other work was running ({busy_note}1-minute load average {load:.1f} on {os.cpu_count()} cores before "
            "the run): absolute times are distorted, compare ratios measured in the same process.")


def markdown(res: dict) -> str:
    head = (f"Machine: {res['machine']}, torch {res['torch']}, device {res['device']}, {res['threads']} threads; "
            f"load average {res['loadavg_start'][0]:.2f} at start, {res['loadavg_end'][0]:.2f} at end; "
            f"{res['date']}, {res['mode']} run, {res['total_s']:.0f} s. {res['note']} "
            "Written by `benchmarks/train_speed.py --markdown`.")
    how = ("Each step is one optimizer step of `Trainer.fit` (`Trainer._loss` under the recipe's autocast, backward, "
           "grad clip, AdamW, scheduler) on one reused batch of a synthetic set (data loading not timed); median of "
           f"the timed steps after warm-up; random weights. Memory: {res['memory_method']}")
    lines = [head, "", how, "",
             ("| config | recipe | stage | precision | batch | params M (trainable) | step s | samples/s | peak MB | "
              "MB/sample | of which grads+AdamW MB | activations MB/sample |"),
             "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["steps"]:
        lines.append(f"| {r['name']} | {r['recipe']} | {r['stage']} | {r['precision']} | {r['batch']} | "
                     f"{r['params_m']:.1f} ({r['trainable_m']:.1f}) | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | "
                     f"{r['peak_mb']:.0f} | {r['mb_per_sample']:.1f} | {r['state_mb']:.0f} | "
                     f"{r['activation_mb_per_sample']:.1f} |")
    d = res.get("ddp")
    if d:
        lines += ["", (f"**DDP scaling** ({d['model']}, {d['recipe']}, global batch {d['global_batch']}, "
                       f"{d['backend']}): 1 process x {d['threads_total']} threads {d['single_samples_per_s']:.1f} "
                       f"samples/s, 2 processes x {d['threads_per_rank']} thread(s) {d['ddp_samples_per_s']:.1f} "
                       f"samples/s: ratio **{d['ratio']:.2f}** (median of {d['rounds']} alternated rounds). Reference: 1 process x "
                       f"{d['threads_per_rank']} thread(s), whole batch, {d['half_threads_samples_per_s']:.1f} samples/s, "
                       f"so DDP efficiency = DDP / (2 x that) = {d['efficiency']:.2f} (what the all-reduce and the feature "
                       "gathers cost; a ratio above the efficiency means one process used its extra threads poorly).")]
    elif res.get("ddp_skipped"):
        lines += ["", f"DDP scaling: skipped ({res['ddp_skipped']})."]
    if res["cache"]:
        lines += ["", ("**Frozen-tower caches in finetune** (configs/finetune.yaml, data.augment false; the three "
                       "variants alternated on one model):"), "",
                  ("| model | batch | step s: no cache | text cache | text + prior cache | ratio text | "
                   "ratio cached | target <= 0.6 | GFLOP step none / cached | GFLOP text fwd / prior fwd | "
                   "s text fwd / prior fwd |"),
                  "|---|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
        for c in res["cache"]:
            g = c.get("gflops", {})
            gtxt = f"{_g(g['step_none'])} / {_g(g['step_cached'])}" if g else "-"
            gparts = f"{_g(g['text_forward'])} / {_g(g['prior_forward'])}" if g else "-"
            lines.append(f"| {c['model']} | {c['batch']} | {c['step_s']['none']:.3f} | {c['step_s']['text']:.3f} | "
                         f"{c['step_s']['text+prior']:.3f} | {c['ratio_text']:.2f} | **{c['ratio_cached']:.2f}** | "
                         f"{'met' if c['target_met'] else 'NOT met'} | {gtxt} | {gparts} | "
                         f"{c['parts_s']['text_forward']:.3f} / {c['parts_s']['prior_forward']:.3f} |")
        lines += [""] + ["* " + explain_cache(c) for c in res["cache"] if "gflops" in c]
    return "\n".join(lines)


def _g(x: float) -> str:
    """GFLOP with three significant digits (4.2, 48.1, 179)."""
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def explain_cache(c: dict) -> str:
    g, s = c["gflops"], c["step_s"]
    skipped = s["none"] - s["text+prior"]
    parts = c["parts_s"]["text_forward"] + c["parts_s"]["prior_forward"]
    return (f"{c['model']} (batch {c['batch']}): the caches skip {_g(g['text_forward'] + g['prior_forward'])} of "
            f"{_g(g['step_none'])} GFLOP a step; what is left is the image tower's forward and backward, so at equal "
            f"FLOP rates the cached step would take {c['flop_ratio']:.2f} x the uncached one (FLOP bound). "
            f"Time saved {skipped:.3f} s a step against {parts:.3f} s for the text and prior forwards timed alone. "
            f"Rates (GFLOP/s): uncached step {c['gflop_per_s']['step_none']:.0f}, cached step "
            f"{c['gflop_per_s']['step_cached']:.0f}, text forward {c['gflop_per_s']['text_forward']:.0f}, prior "
            f"forward {c['gflop_per_s']['prior_forward']:.0f}.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--precision", default="auto",
                   help="auto (recipe's on CUDA, fp32 on a CPU without bf16 units), fp32, bf16, fp16")
    p.add_argument("--batch", type=int, default=None, help="batch of figure 1 and global batch of figure 2 (16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per figure (default 5, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    p.add_argument("--ddp-rounds", type=int, default=None, help="alternated single/DDP rounds (default 2, quick 1)")
    p.add_argument("--open-batch", type=int, default=None, help="batch of the priorclip-open cache figure (8, quick 4)")
    p.add_argument("--only", nargs="+", choices=("steps", "ddp", "cache"), default=None)
    p.add_argument("--no-open", action="store_true", help="skip the full-size priorclip-open cache figure")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(HERE / "results_train.json"))
    p.add_argument("--markdown", action="store_true", help="also write the section of benchmarks/RESULTS.md")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--render", metavar="JSON", default=None,
                   help="only rewrite the RESULTS.md section from a results JSON written earlier (no measuring)")
    p.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        kind, spec_path, work = args.child
        spec = json.loads(Path(spec_path).read_text())
        fn = {"steps": measure_steps, "ddp": measure_ddp_rank}[kind]
        print("RESULT " + json.dumps(fn(spec, Path(work))), flush=True)
        return 0

    if args.render:
        if not Path(args.render).is_file():
            p.error(f"--render {args.render}: no such file (a results JSON written by this script, "
                    "e.g. benchmarks/results_train.json)")
        sys.path.insert(0, str(HERE))
        from results_md import write_sections

        write_sections(args.results, {SECTION: markdown(json.loads(Path(args.render).read_text()))},
                       "benchmarks/train_speed.py --markdown")
        print(f"wrote section {SECTION!r} of {args.results} from {args.render}")
        return 0

    import torch

    q = args.quick
    threads = args.threads or torch.get_num_threads()
    batch = args.batch or 16
    steps = args.steps or (3 if q else 5)
    warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    rounds = args.ddp_rounds or (1 if q else 2)
    open_batch = args.open_batch or (4 if q else 8)
    only = set(args.only or ("steps", "ddp", "cache"))
    torch.set_num_threads(threads)
    t_start = time.time()
    busy = busy_cores()
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
           "device": args.device, "threads": threads, "mode": "quick" if q else "default",
           "loadavg_start": list(os.getloadavg()),
           "settings": {"batch": batch, "steps": steps, "warmup": warmup, "ddp_rounds": rounds, "open_batch": open_batch,
                        "precision": args.precision},
           "busy_cores_start": busy,
           "note": _load_note(os.getloadavg()[0], busy),
           "memory_method": ("CUDA: max_memory_allocated during the steps minus memory_allocated after building, "
                             "per sample." if args.device.startswith("cuda") else
                             "peak RSS during the steps (VmHWM, reset via /proc/self/clear_refs after building) minus "
                             "RSS after building the model and one batch, in a fresh child process per config, "
                             "divided by the batch; it includes gradients and AdamW state (counted: 3 x 4 bytes per "
                             "trainable parameter), subtracted in the last column."),
           "steps": [], "ddp": None, "cache": []}
    with tempfile.TemporaryDirectory(prefix="priorclip-train-speed-") as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data", max(batch, open_batch, 16))
        base = {"data_dir": str(data), "device": args.device, "precision": args.precision, "steps": steps,
                "warmup": warmup}
        if "steps" in only:
            print(f"{'config':<24} {'prec':<5} {'batch':>5} {'step s':>8} {'samples/s':>9} {'peak MB':>8} "
                  f"{'MB/sample':>9} {'act MB/s':>8}", flush=True)
            for label, recipe, model in SMALL_CONFIGS:
                spec = {**base, "label": label, "recipe": recipe, "model": model, "batch": batch}
                r = run_child("steps", spec, tmp / f"steps-{recipe}", threads)
                res["steps"].append(r)
                print(f"{label:<24} {r['precision']:<5} {r['batch']:>5} {r['step_s']:>8.3f} {r['samples_per_s']:>9.1f} "
                      f"{r['peak_mb']:>8.0f} {r['mb_per_sample']:>9.1f} {r['activation_mb_per_sample']:>8.1f}",
                      flush=True)
        if "ddp" in only:
            n_gpu = torch.cuda.device_count() if args.device.startswith("cuda") else 0
            if args.device.startswith("cuda") and n_gpu < 2:
                res["ddp_skipped"] = f"needs 2 GPUs, {n_gpu} visible"
                print(f"DDP: skipped ({res['ddp_skipped']})")
            else:
                spec = {**base, "recipe": "closed.yaml", "model": "priorclip-closed-small", "batch": batch}
                d = measure_ddp(spec, tmp / "ddp", threads, rounds)
                res["ddp"] = d
                print(f"DDP {d['model']} global batch {d['global_batch']}: 1 x {d['threads_total']} threads "
                      f"{d['single_samples_per_s']:.1f} samples/s, 2 x {d['threads_per_rank']} "
                      f"{d['ddp_samples_per_s']:.1f} samples/s, ratio {d['ratio']:.2f}; 1 x {d['threads_per_rank']} "
                      f"{d['half_threads_samples_per_s']:.1f} samples/s, efficiency {d['efficiency']:.2f}", flush=True)
        if "cache" in only:
            models = [("priorclip-open-small", batch)] + ([] if args.no_open else [("priorclip-open", open_batch)])
            for model, b in models:
                # the small model's steps are cheap: twice the steps steady its medians on a busy machine
                spec = {**base, "model": model, "batch": b, "threads": threads,
                        "steps": 2 * steps if model.endswith("small") else max(2, steps - 1)}
                c = measure_cache(spec, tmp / f"cache-{model}")
                res["cache"].append(c)
                print(f"cache {model} batch {c['batch']}: step s none {c['step_s']['none']:.3f}, text "
                      f"{c['step_s']['text']:.3f}, text+prior {c['step_s']['text+prior']:.3f}; ratio cached "
                      f"{c['ratio_cached']:.2f} (target <= {CACHE_TARGET}: {'met' if c['target_met'] else 'NOT met'})",
                      flush=True)
                if "gflops" in c:
                    print("  " + explain_cache(c), flush=True)
    res["loadavg_end"] = list(os.getloadavg())
    res["total_s"] = round(time.time() - t_start, 1)
    sys.path.insert(0, str(HERE))
    from results_md import write_json, write_sections

    write_json(args.out, res)
    print(f"wrote {args.out} ({res['total_s']:.0f} s)")
    if args.markdown:
        write_sections(args.results, {SECTION: markdown(res)}, "benchmarks/train_speed.py --markdown")
        print(f"wrote section {SECTION!r} of {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
