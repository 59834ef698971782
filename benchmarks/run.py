"""PriorCLIP performance suite: encoding throughput against the strongest alternative, FLOPs,
inference speed-ups, torch.compile, ONNX Runtime and evaluation from cached embeddings, in this
process; training step time, memory and DDP scaling (train_speed.py), search latency
(search_speed.py) and index build throughput (index_speed.py) as child scripts.

    .venv/bin/python benchmarks/run.py            # everything: about an hour on 2 idle cores
    .venv/bin/python benchmarks/run.py --quick    # throughput batch 8 x 3 runs, children in their quick modes
    .venv/bin/python benchmarks/run.py --only throughput onnx evaluation

Speed-ups, torch.compile and ONNX Runtime use --aux-batch 8 and --aux-runs 3 in both modes.
    .venv/bin/python benchmarks/run.py --device cuda --out /tmp/results.json

Every figure is a median of several timed runs after one warm-up run. Every figure is also a ratio
against an alternative timed in the same process, with the runs of the compared models
interleaved (A, B, C, A, B, C, ...), so a load change on a shared machine hits all of them alike.
All models have random weights (nothing is downloaded) and every compared model gets the same
input tensors. PriorCLIP models run as the search encoder and evaluation run them, with
`optimize_for_inference()` (frozen prior: BatchNorm folded, channels_last); their images are
also timed with it off, in the same runs. FLOPs are counted, not estimated, with torch.utils.flop_counter.FlopCounterMode at
batch 1 (attention through the math kernel and nn.MultiheadAttention's fused fast path off, so
that every matmul is seen).

Writes --out (JSON: the machine, versions, every figure; a child script's figures under its part's
name, copied from the JSON it writes, or from its last run when it was not run now) and the
sections "## Encoding throughput and FLOPs", "## Export" and "## Evaluation from cached
embeddings" of benchmarks/RESULTS.md; each child script writes its own section.
docs/PERFORMANCE.md explains each figure.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import count_flops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"  # the child scripts and the JSON files they write
CAPTIONS = [
    "many buildings and some green trees are around a playground",
    "an airport with several planes parked next to the terminal",
    "a river crosses the farmland with a bridge over it",
    "a dense residential area with red roofs",
    "two baseball fields surrounded by trees",
    "a harbor with many boats docked at the piers",
    "a highway passes through the desert",
    "a large parking lot full of cars beside a stadium",
]
SLOW_FACTOR = 4  # an inference option this many times slower than the baseline is timed once
SECTION_PARTS = {"## Encoding throughput and FLOPs": {"throughput", "speedups", "compile"}, "## Export": {"onnx"},
                 "## Evaluation from cached embeddings": {"evaluation"}}
TARGET_EFFICIENCY = 0.9  # open-domain image throughput ratio must reach 0.9 x its FLOP-bound ratio
PLAIN_SUFFIX = "(optimize_for_inference off)"
OPTIMIZED = "optimize_for_inference (prior folded + channels_last)"
#: What the package itself does (a fixed fact, not this run's verdict; docs/PERFORMANCE.md says why)
USED_OPTIONS = {"inference_mode (baseline)": "yes (search, evaluation)",
                OPTIMIZED: "yes (search, evaluation, frozen prior in closed training)",
                "prior: BatchNorm folded": "as part of optimize_for_inference",
                "prior: channels_last": "as part of optimize_for_inference"}


# ---- measuring ----------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict, runs: int, device: str = "cpu", warmup: int = 1) -> dict:
    """Median seconds per call of each fn, warm-up first, then timed runs round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "runs_s": [round(x, 4) for x in t]} for name, t in times.items()}


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    import open_clip

    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"}),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "load_average_start": list(os.getloadavg()),
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ---- models -------------------------------------------------------------------------------------

def build(name: str, device: str):
    """A named PriorCLIP model or an open_clip architecture, random weights, eval mode."""
    if name.startswith("priorclip"):
        import priorclip.models as pm

        model = pm.create_model(name)
    else:
        import open_clip

        with warnings.catch_warnings(), _quiet_logging():
            warnings.simplefilter("ignore")
            model = open_clip.create_model(name, pretrained=None)
    return model.to(device).eval()


@contextlib.contextmanager
def _quiet_logging():
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def compare(models: dict, inputs: torch.Tensor, method: str, runs: int, device: str) -> dict:
    """Throughput of `method` for each model on the same inputs, interleaved, under inference_mode."""
    def caller(model):
        fn = getattr(model, method)

        def call():
            with torch.inference_mode():
                fn(inputs)
        return call

    timing = interleaved({name: caller(m) for name, m in models.items()}, runs, device)
    return {name: {**t, "items_per_s": inputs.shape[0] / t["median_s"]} for name, t in timing.items()}


def flops_of(models: dict, method: str, example: torch.Tensor) -> dict:
    """FLOPs per item of `method` for each model (example: batch 1, on the models' device)."""
    return {name: count_flops(lambda m=model: getattr(m, method)(example.to(next(m.parameters()).device)))
            for name, model in models.items()}


def ratios(subject: str, throughput: dict, flops: dict) -> dict:
    """PriorCLIP / alternative throughput next to the FLOP-bound ratio FLOPs(alt) / FLOPs(PriorCLIP)."""
    out = {}
    for alt in throughput:
        if alt == subject:
            continue
        measured = throughput[subject]["items_per_s"] / throughput[alt]["items_per_s"]
        bound = flops[alt] / flops[subject]
        out[alt] = {"throughput_ratio": measured, "flop_bound_ratio": bound, "efficiency": measured / bound}
    strongest = max((a for a in throughput if a != subject), key=lambda a: throughput[a]["items_per_s"])
    return {"vs": out, "strongest_alternative": strongest}


def throughput_section(args, results: dict) -> None:
    device, batch, runs = args.device, args.batch, args.runs
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=gen)
    one_image = images[:1].clone()
    section = results.setdefault("throughput", {})

    groups = [("open", "priorclip-open", ["ViT-B-32", "RN50"]),
              ("closed", "priorclip-closed", ["priorclip-closed-baseline"])]
    for domain, subject, alternatives in groups:
        log(f"[throughput] building {subject} and {alternatives}")
        models = {name: build(name, device) for name in [subject, *alternatives]}
        # The subject runs the way the search encoder and evaluation run it: optimize_for_inference
        # (its frozen prior with BatchNorm folded, channels_last). Its images are also timed with
        # that switched off, on an identical copy in the same interleaved runs, as the "before".
        plain_name = f"{subject} {PLAIN_SUFFIX}"
        plain = copy.deepcopy(models[subject])
        models[subject].optimize_for_inference()
        texts = (CAPTIONS * (batch // len(CAPTIONS) + 1))[:batch]
        tokens = models[subject].tokenize(texts)  # open: CLIP BPE (same as open_clip's); closed: WordPiece
        for modality, method, inputs, example in [("image", "encode_image", images, one_image),
                                                   ("text", "encode_text", tokens, tokens[:1])]:
            log(f"[throughput] {domain} {modality}: counting FLOPs, then {runs} runs of batch {batch}")
            flops = flops_of(models, method, example)
            timed = {**models, plain_name: plain} if modality == "image" else models  # text: nothing to switch
            timing = compare(timed, inputs.to(device), method, runs, device)
            alts = {k: v for k, v in timing.items() if k != plain_name}
            entry = {"subject": subject, "optimized": True, "batch": batch, "runs": runs,
                     "input_shape": list(inputs.shape), "flops_per_item": flops, "timing": timing,
                     **ratios(subject, alts, flops)}
            if plain_name in timing:
                before = ratios(plain_name, {k: v for k, v in timing.items() if k != subject},
                                {**flops, plain_name: flops[subject]})
                entry["plain"] = {"model": plain_name, "vs": before["vs"],
                                  "speedup_of_optimized": timing[plain_name]["median_s"] / timing[subject]["median_s"]}
            section[f"{domain}_{modality}"] = entry
            log("  " + ", ".join(f"{n}: {t['items_per_s']:.1f}/s" for n, t in timing.items())
                + "; GFLOP " + ", ".join(f"{n} {f / 1e9:.2f}" for n, f in flops.items()))
        if domain == "open":
            model = models[subject]
            stem = count_flops(lambda: model.visual._embeds(one_image))
            prior = count_flops(lambda: model.instruction_token(one_image))
            total = section["open_image"]["flops_per_item"][subject]
            section["open_image"]["flop_shares"] = {"prior": prior / total, "vit_stem": stem / total}
        del models, plain
        gc.collect()
    vit = section["open_image"]["vs"]["ViT-B-32"]
    section["target"] = {
        "rule": f"priorclip-open image throughput ratio to ViT-B-32 >= {TARGET_EFFICIENCY} x FLOP-bound ratio",
        "throughput_ratio": vit["throughput_ratio"], "flop_bound_ratio": vit["flop_bound_ratio"],
        "needed": TARGET_EFFICIENCY * vit["flop_bound_ratio"], "met": vit["efficiency"] >= TARGET_EFFICIENCY,
        "throughput_ratio_optimizations_off": section["open_image"]["plain"]["vs"]["ViT-B-32"]["throughput_ratio"],
    }


# ---- inference speed-ups ---------------------------------------------------------------------------

def _prior_pipelined(model, images: torch.Tensor, pool) -> torch.Tensor:
    """Two micro-batches: the prior of the second runs in a thread while the ViT encodes the first."""
    half = images.shape[0] // 2
    first, second = images[:half], images[half:]
    instruction = model.instruction_token(first)
    future = pool.submit(_in_inference_mode, model.instruction_token, second)
    out_first = model.encode_image(first, instruction=instruction)
    out_second = model.encode_image(second, instruction=future.result())
    return torch.cat([out_first, out_second])


def _in_inference_mode(fn, *args):
    with torch.inference_mode():  # grad mode is thread-local: the worker thread needs its own
        return fn(*args)


def speedup_section(args, results: dict) -> None:
    """Each inference option on priorclip-open encode_image, against inference_mode fp32 eager."""
    device, batch, runs = args.device, args.aux_batch, args.aux_runs
    log(f"[speed-ups] priorclip-open encode_image, batch {batch}, {runs} runs")
    model = build("priorclip-open", device)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        reference = model.encode_image(images, normalize=True)
    variants, notes, outputs = {}, {}, {}

    def baseline():
        with torch.inference_mode():
            return model.encode_image(images, normalize=True)
    variants["inference_mode (baseline)"] = baseline

    def no_grad():
        with torch.no_grad():
            return model.encode_image(images, normalize=True)
    variants["no_grad"] = no_grad

    # The prior's inference copy (model.optimize_for_inference), each technique alone and both;
    # every variant is an identical copy of the model with its own switch.
    from priorclip.models.inference import count_batchnorm, fold_batchnorm

    pairs = count_batchnorm(model.res_visual) - count_batchnorm(fold_batchnorm(model.res_visual))
    for name, options in [("prior: BatchNorm folded", {"channels_last": False}),
                          ("prior: channels_last", {"fold_batchnorm": False}),
                          (OPTIMIZED, {})]:
        variant = copy.deepcopy(model).optimize_for_inference(**options)

        def optimized(variant=variant):
            with torch.inference_mode():
                return variant.encode_image(images, normalize=True)
        variants[name] = optimized
        if name != "prior: channels_last":
            notes[name] = f"{pairs} conv+BN pairs folded"
    fast_model = variant  # the last one: both techniques

    dev_type = torch.device(device).type

    def bf16():
        with torch.inference_mode(), torch.autocast(dev_type, dtype=torch.bfloat16):
            return model.encode_image(images, normalize=True).float()
    variants["bf16 autocast"] = bf16

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def pipelined():
        with torch.inference_mode():
            return torch.nn.functional.normalize(_prior_pipelined(model, images, pool), dim=-1)
    variants["prior in a thread (2 micro-batches)"] = pipelined

    def pipelined_fast():
        with torch.inference_mode():
            return torch.nn.functional.normalize(_prior_pipelined(fast_model, images, pool), dim=-1)
    variants[f"{OPTIMIZED} + prior in a thread"] = pipelined_fast

    first_call, once = {}, {}
    for name, fn in list(variants.items()):
        try:
            start = time.perf_counter()
            out = fn()
            first_call[name] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - an unsupported option is a result, not a crash
            notes[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            del variants[name]
            continue
        outputs[name] = {"max_abs_diff_vs_fp32": float((out.float() - reference).abs().max()),
                         "min_cosine_vs_fp32": float(torch.nn.functional.cosine_similarity(out.float(), reference).min())}
        # An option many times slower than the baseline (bf16 without native bf16 units) is timed
        # by this one call only: repeating it would cost minutes and change no conclusion.
        if first_call[name] > SLOW_FACTOR * first_call["inference_mode (baseline)"]:
            once[name] = {"median_s": first_call[name], "runs_s": [round(first_call[name], 4)], "timed_once": True}
            del variants[name]
    timing = {**interleaved(variants, runs, device), **once}
    pool.shutdown()
    base = timing["inference_mode (baseline)"]["median_s"]
    entry = {"batch": batch, "runs": runs, "notes": notes, "variants": {}}
    for name, t in timing.items():
        entry["variants"][name] = {**t, "items_per_s": batch / t["median_s"], "speedup": base / t["median_s"],
                                   **outputs[name]}
        log(f"  {name}: {batch / t['median_s']:.1f}/s, x{base / t['median_s']:.2f}, "
            f"max|diff| {outputs[name]['max_abs_diff_vs_fp32']:.1e}")
    results["speedups"] = entry
    del model, variant, fast_model
    gc.collect()


# ---- torch.compile, in a child process so a slow or failing compile cannot stall the suite ------------

def compile_child(batch: int, runs: int, device: str, out: str) -> None:
    """priorclip-open encode_image eager, with optimize_for_inference, and with its prior also
    compiled (optimize_for_inference(compile=True): inductor with freezing), next to ViT-B-32 eager."""
    model = build("priorclip-open", device)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(device)
    fast = copy.deepcopy(model).optimize_for_inference()
    compiled = copy.deepcopy(model).optimize_for_inference(compile=True)
    vit = build("ViT-B-32", device)
    start = time.perf_counter()
    with torch.inference_mode():
        got = compiled.encode_image(images, normalize=True)
    compile_s = time.perf_counter() - start
    with torch.inference_mode():
        want = model.encode_image(images, normalize=True)

    def caller(m):
        def call():
            with torch.inference_mode():
                m.encode_image(images, normalize=True)
        return call
    names = {"eager": model, "optimize_for_inference": fast, "optimize_for_inference(compile=True)": compiled,
             "ViT-B-32 (eager)": vit}
    timing = interleaved({name: caller(m) for name, m in names.items()}, runs, device)
    vit_s = timing["ViT-B-32 (eager)"]["median_s"]
    Path(out).write_text(json.dumps({
        "status": "ok", "compiled": "the prior (inductor, freezing), after BatchNorm folding and channels_last",
        "compile_and_first_call_s": compile_s, "timing": timing,
        "speedup": timing["eager"]["median_s"] / timing["optimize_for_inference(compile=True)"]["median_s"],
        "speedup_vs_optimize_for_inference": (timing["optimize_for_inference"]["median_s"]
                                              / timing["optimize_for_inference(compile=True)"]["median_s"]),
        "ratio_to_vit": {name: vit_s / timing[name]["median_s"] for name in names if not name.startswith("ViT")},
        "max_abs_diff": float((got - want).abs().max())}))


def compile_section(args, results: dict) -> None:
    log(f"[torch.compile] priorclip-open encode_image in a child process (limit {args.compile_timeout} s)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compile.json"
        cmd = [sys.executable, __file__, "--_compile-child", str(out), "--device", args.device,
               "--batch", str(args.aux_batch), "--runs", str(args.aux_runs)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.compile_timeout)
            if proc.returncode == 0 and out.exists():
                entry = json.loads(out.read_text())
            else:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                entry = {"status": "failed", "error": " | ".join(tail)[-500:]}
        except subprocess.TimeoutExpired:
            entry = {"status": "timed out", "error": f"no result within {args.compile_timeout} s (compile included)"}
        entry["wall_s"] = time.perf_counter() - start
    results["torch_compile"] = {"batch": args.aux_batch, "runs": args.aux_runs, **entry}
    if entry["status"] == "ok":
        log(f"  compiled prior x{entry['speedup']:.2f} vs eager, x{entry['speedup_vs_optimize_for_inference']:.2f} vs "
            f"optimize_for_inference; compile+first call {entry['compile_and_first_call_s']:.0f} s")
    else:
        log(f"  {entry['status']}: {entry.get('error', '')}")


# ---- evaluation from cached embeddings ------------------------------------------------------------------

METRIC_TARGET_S = 0.5  # metric computation on the RSICD-sized test set


def evaluation_section(args, results: dict) -> None:
    """What `priorclip evaluate` does once the embeddings exist (RSICD test size: 1,093 images,
    5,465 captions, 12 % of them shared): scores, then every tie rule and the tie statistics.
    The alternative is clip_benchmark's recall on the same score matrix (timed once: 0.7-10 s
    on 2 cores, idle to loaded)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from metrics_speed import clip_benchmark_recall, make_embeddings

    from priorclip.evaluation.metrics import (
        recall_metrics,
        recall_report,
        similarity_matrix,
    )

    img, txt, t2i = make_embeddings(dim=512)
    img_t, txt_t = torch.from_numpy(img), torch.from_numpy(txt)
    scores = similarity_matrix(img_t, txt_t).numpy()
    log(f"[evaluation] {len(img)} images x {len(txt)} captions, embed 512, median of {args.runs}")
    fns = {"evaluation from cached embeddings (scores + recall_report)":
               lambda: recall_report(similarity_matrix(img_t, txt_t).numpy(), t2i),
           "scores alone (similarity_matrix)": lambda: similarity_matrix(img_t, txt_t),
           "metrics alone (recall_metrics, ties=expected)": lambda: recall_metrics(scores, t2i),
           "metrics alone, every tie rule + tie statistics (recall_report)": lambda: recall_report(scores, t2i)}
    timed = interleaved(fns, args.runs)
    entry = {"n_images": len(img), "n_texts": len(txt), "dim": 512, "runs": args.runs,
             "seconds": {name: t["median_s"] for name, t in timed.items()}}
    try:
        t0 = time.perf_counter()
        clip_benchmark_recall(scores, t2i)
        entry["clip_benchmark_recall_s"] = time.perf_counter() - t0
    except ImportError as exc:
        entry["clip_benchmark_recall_s"] = None
        log(f"  clip_benchmark not installed ({exc}); no alternative timed")
    metric_s = entry["seconds"]["metrics alone, every tie rule + tie statistics (recall_report)"]
    entry["target"] = {"metric_s": metric_s, "limit_s": METRIC_TARGET_S, "met": metric_s < METRIC_TARGET_S}
    results["evaluation"] = entry
    for name, sec in entry["seconds"].items():
        log(f"  {name}: {1000 * sec:.0f} ms")
    if entry["clip_benchmark_recall_s"]:
        log(f"  clip_benchmark recall: {entry['clip_benchmark_recall_s']:.1f} s")


# ---- the other benchmark scripts, run as children ---------------------------------------------------------

#: part -> (script, JSON it writes, extra arguments in --quick mode); each child also writes its own
#: RESULTS.md section, and its JSON is copied into results.json under the part's name.
CHILD_SCRIPTS = {
    "training": ("train_speed.py", "results_train.json", ["--quick"]),
    "search": ("search_speed.py", "results_search.json", ["--sizes", "100000"]),
    "index": ("index_speed.py", "results_index.json", ["--images", "64", "--scene-side", "2048", "--runs", "1"]),
}


def child_section(part: str, args, results: dict) -> None:
    script, json_name, quick_args = CHILD_SCRIPTS[part]
    # search/index write their JSON only with --markdown; train_speed always writes its JSON
    cmd = [sys.executable, str(BENCH_DIR / script)]
    if part != "training" or args.markdown:
        cmd += ["--markdown", "--results", str(args.markdown)]
    if args.quick:
        cmd += quick_args
    if part == "training" and args.device != "cpu":
        cmd += ["--device", args.device]
    log(f"[{part}] {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, cwd=ROOT, check=False)
    if proc.returncode != 0:
        results[part] = {"status": "failed", "returncode": proc.returncode, "script": script}
        log(f"  {script} failed (exit {proc.returncode}); its earlier figures are not copied")
        return
    results[part] = {"status": "ok", "script": script, **json.loads((BENCH_DIR / json_name).read_text())}


# ---- ONNX Runtime ---------------------------------------------------------------------------------------

def onnx_section(args, results: dict) -> None:
    try:
        import onnxruntime  # noqa: F401

        from priorclip.export import export_onnx, onnx_session
    except ImportError as exc:
        results["onnx"] = {"status": "skipped", "error": f"{exc} (pip install onnx onnxruntime)"}
        log(f"[onnx] skipped: {exc}")
        return
    batch, runs = args.aux_batch, args.aux_runs
    entry = {"status": "ok", "batch": batch, "runs": runs, "threads": torch.get_num_threads(), "models": {}}
    for name in ["priorclip-open", "priorclip-closed"]:
        log(f"[onnx] exporting {name} (checked against PyTorch), then onnxruntime vs PyTorch CPU, batch {batch}")
        model = build(name, "cpu")
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            exported = export_onnx(model, tmp)
            export_s = time.perf_counter() - start
            sizes = {"image": exported.image_path.stat().st_size, "text": exported.text_path.stat().st_size}
            images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(3))
            tokens = model.tokenize((CAPTIONS * (batch // len(CAPTIONS) + 1))[:batch])
            per_model = {"export_s": export_s, "exporter": exported.exporter,
                         "check_max_abs_diff": exported.max_abs_diff, "file_bytes": sizes}
            for modality, path, inputs, method, input_name in [
                    ("image", exported.image_path, images, "encode_image", "images"),
                    ("text", exported.text_path, tokens, "encode_text", "tokens")]:
                session = onnx_session(path, threads=torch.get_num_threads())
                feed = {input_name: inputs.numpy()}
                fn = getattr(model, method)

                def torch_call():
                    with torch.inference_mode():
                        fn(inputs, normalize=True)
                timing = interleaved({"pytorch": torch_call, "onnxruntime": lambda: session.run(None, feed)}, runs)
                per_model[modality] = {
                    **{k: {**v, "items_per_s": batch / v["median_s"]} for k, v in timing.items()},
                    "speedup": timing["pytorch"]["median_s"] / timing["onnxruntime"]["median_s"]}
                log(f"  {name} {modality}: onnxruntime x{per_model[modality]['speedup']:.2f} vs PyTorch")
                del session
        entry["models"][name] = per_model
        del model
        gc.collect()
    results["onnx"] = entry


# ---- reporting ------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def markdown_sections(results: dict) -> dict:
    m = results["machine"]
    loads = results.get("load_average_1min", {})

    def machine(key):
        """The machine line of a section: its part's own date and settings (a later `--only` run of
        other parts leaves them as they were measured)."""
        part = loads.get(key, {})
        settings = part.get("settings", results["settings"])
        return (f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['torch_threads']} torch threads), "
                f"torch {m['torch']}, open_clip {m['open_clip']}"
                + (f", onnxruntime {m['onnxruntime']}" if "onnxruntime" in m else "")
                + f"; device {settings['device']}; {settings['mode']} run, {part.get('date', results['date'])}.")

    def load_note(*keys):
        parts = [f"{k} {loads[k]['start']:.1f}-{loads[k]['end']:.1f}" for k in keys if k in loads]
        return ("1-minute load average (start-end) while measuring: " + ", ".join(parts) + ".") if parts else ""
    tp_settings = loads.get("throughput", {}).get("settings", results["settings"])
    out = {}
    lines = [machine("throughput"), load_note("throughput", "speedups", "torch_compile"), "",
             "Random weights, same inputs for every model, `torch.inference_mode`, median of "
             f"{tp_settings['runs']} interleaved runs after a warm-up, batch {tp_settings['batch']}. "
             "Ratio = PriorCLIP items/s / alternative items/s; FLOP-bound = FLOPs(alternative) / FLOPs(PriorCLIP), "
             "counted with FlopCounterMode at batch 1; efficiency = ratio / FLOP-bound.", "",
             "| figure | model | items/s | GFLOP/item | ratio | FLOP-bound | efficiency |",
             "|---|---|---:|---:|---:|---:|---:|"]
    tp = results.get("throughput", {})
    for key, entry in tp.items():
        if key == "target":
            continue
        subject = entry["subject"]
        plain = entry.get("plain", {})
        for name, t in entry["timing"].items():
            gf = entry["flops_per_item"].get(name, entry["flops_per_item"][subject]) / 1e9
            if name == subject:
                label = f"**{name}**" + (" (optimize_for_inference)" if entry.get("optimized") and key.endswith("image") else "")
                lines.append(f"| {key.replace('_', ' ')} | {label} | {_f(t['items_per_s'], 1)} | {_f(gf)} | 1 | 1 | |")
            elif name == plain.get("model"):
                lines.append(f"| | {name}; the switch gives x{_f(plain['speedup_of_optimized'])} | "
                             f"{_f(t['items_per_s'], 1)} | {_f(gf)} | | | |")
            else:
                r = entry["vs"][name]
                star = " (strongest)" if name == entry["strongest_alternative"] else ""
                lines.append(f"| | {name}{star} | {_f(t['items_per_s'], 1)} | {_f(gf)} | {_f(r['throughput_ratio'])} "
                             f"| {_f(r['flop_bound_ratio'])} | {_f(r['efficiency'])} |")
    if "target" in tp:
        t = tp["target"]
        lines += ["", f"Target ({t['rule']}): ratio {_f(t['throughput_ratio'], 3)}, needed >= {_f(t['needed'], 3)}: "
                      f"**{'met' if t['met'] else 'NOT met'}**"
                      + (f" (with optimize_for_inference off: {_f(t['throughput_ratio_optimizations_off'], 3)})."
                         if "throughput_ratio_optimizations_off" in t else ".")]
        timing = tp["open_image"]["timing"]
        if {"ViT-B-32", "RN50"} <= set(timing):
            # PriorCLIP-open's image side is a ViT-B/32 plus a ModifiedResNet-50 prior: if it costs
            # what its two parts cost on their own, its time per image is the sum of theirs.
            parts = 1.0 / (1.0 / timing["ViT-B-32"]["items_per_s"] + 1.0 / timing["RN50"]["items_per_s"])
            plain = tp["open_image"].get("plain", {}).get("model")
            lines.append(f"Sum of its parts (ViT-B-32 time + RN50 time per image, both plain): {parts:.2f} images/s "
                         f"predicted; measured {timing['priorclip-open']['items_per_s']:.2f} with optimize_for_inference"
                         + (f", {timing[plain]['items_per_s']:.2f} without." if plain in timing else "."))
        shares = tp["open_image"].get("flop_shares")
        if shares:
            lines.append(f"FLOP shares of priorclip-open encode_image: prior {shares['prior']:.1%}, "
                         f"ViT stem {shares['vit_stem']:.2%}.")
    sp = results.get("speedups")
    if sp:
        lines += ["", f"### Inference options (priorclip-open encode_image, batch {sp['batch']}, median of {sp['runs']})", "",
                  "| option | items/s | speed-up | max abs diff vs fp32 | min cosine vs fp32 | >= x1.05 in this run "
                  "| used by PriorCLIP |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for name, v in sp["variants"].items():
            pays = "baseline" if name.startswith("inference_mode") else ("yes" if v["speedup"] >= 1.05 else "no")
            if v.get("timed_once"):
                pays += " (timed once: > 4x slower)"
            lines.append(f"| {name} | {_f(v['items_per_s'], 1)} | {_f(v['speedup'])} | {v['max_abs_diff_vs_fp32']:.1e} "
                         f"| {v['min_cosine_vs_fp32']:.5f} | {pays} | {USED_OPTIONS.get(name, 'no')} |")
        notes = sp.get("notes", {})
        lines += [f"| {name} | | | | | {note} |" for name, note in notes.items() if name not in sp["variants"]]
        lines += [""] + [f"{name}: {note}." for name, note in notes.items() if name in sp["variants"]]
    tc = results.get("torch_compile")
    if tc:
        if tc["status"] == "ok" and "ratio_to_vit" in tc:
            bound = tp.get("target", {}).get("flop_bound_ratio")
            ratios_ = ", ".join(f"{name} {_f(r, 3)}" for name, r in tc["ratio_to_vit"].items())
            lines += ["", f"torch.compile of the prior (`optimize_for_inference(compile=True)`: inductor with freezing; "
                          f"child process, batch {tc['batch']}, median of {tc['runs']}): x{_f(tc['speedup'])} vs eager, "
                          f"x{_f(tc['speedup_vs_optimize_for_inference'])} vs `optimize_for_inference()`; compile + first "
                          f"call {tc['compile_and_first_call_s']:.0f} s; max abs diff {tc['max_abs_diff']:.1e}. "
                          f"Image throughput ratio to ViT-B-32 (eager, same runs): {ratios_}"
                          + (f" (FLOP-bound {_f(bound, 3)})." if bound else ".")]
        elif tc["status"] == "ok":
            lines += ["", f"torch.compile (inductor, child process): x{_f(tc['speedup'])} vs eager at batch {tc['batch']}; "
                          f"compile + first call {tc['compile_and_first_call_s']:.0f} s; max abs diff {tc['max_abs_diff']:.1e}."]
        else:
            lines += ["", f"torch.compile: {tc['status']} ({tc.get('error', '')})."]
    out["## Encoding throughput and FLOPs"] = "\n".join(lines)

    ox = results.get("onnx")
    if ox:
        lines = [machine("onnx"), load_note("onnx"), ""]
        if ox["status"] != "ok":
            lines.append(f"ONNX Runtime: {ox['status']} ({ox.get('error', '')}).")
        else:
            lines += [f"`priorclip.export.export_onnx` (opset 17), checked against PyTorch on another batch size; then "
                      f"onnxruntime CPU ({ox['threads']} intra-op threads) vs PyTorch `inference_mode`, batch {ox['batch']}, "
                      f"median of {ox['runs']} interleaved runs.", "",
                      "| model | encoder | exporter | export s (both) | max abs diff | MB | PyTorch items/s | onnxruntime items/s | speed-up |",
                      "|---|---|---|---:|---:|---:|---:|---:|---:|"]
            for name, pm_ in ox["models"].items():
                for modality in ("image", "text"):
                    v = pm_[modality]
                    lines.append(f"| {name} | {modality} | {pm_['exporter'][modality]} | {pm_['export_s']:.0f} "
                                 f"| {pm_['check_max_abs_diff'][modality]:.1e} | {pm_['file_bytes'][modality] / 2**20:.0f} "
                                 f"| {_f(v['pytorch']['items_per_s'], 1)} | {_f(v['onnxruntime']['items_per_s'], 1)} "
                                 f"| {_f(v['speedup'])} |")
        out["## Export"] = "\n".join(lines)

    ev = results.get("evaluation")
    if ev:
        cb = ev.get("clip_benchmark_recall_s")
        report_s = ev["seconds"]["metrics alone, every tie rule + tie statistics (recall_report)"]
        lines = [machine("evaluation"), load_note("evaluation"), "",
                 f"RSICD test size: {ev['n_images']:,} images x {ev['n_texts']:,} captions, cached float32 embeddings "
                 f"(width {ev['dim']}, 12 % of the captions shared), median of {ev['runs']} interleaved runs. "
                 f"Target: metric computation under {ev['target']['limit_s']} s "
                 f"({'met' if ev['target']['met'] else 'NOT met'}).", "",
                 "| step | ms |", "|---|---:|"]
        lines += [f"| {name} | {1000 * sec:.0f} |" for name, sec in ev["seconds"].items()]
        if cb:
            lines += [f"| clip_benchmark's recall (R@1/5/10, one rule) on the same scores, timed once | {1000 * cb:.0f} |",
                      "", f"recall_report (every tie rule + tie statistics) takes {report_s / cb:.3f} of clip_benchmark's "
                          f"time (x{cb / report_s:.0f} faster)."]
        out["## Evaluation from cached embeddings"] = "\n".join(lines)
    return out


def update_markdown(path: Path, sections: dict) -> None:
    """Replace (or append) only our `## ...` sections; everything else in the file is kept as is."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results_md import write_sections

    write_sections(path, sections, "benchmarks/run.py")


#: part -> (function measuring it in this process, its key in results.json / load_average_1min)
IN_PROCESS = {"throughput": (throughput_section, "throughput"), "speedups": (speedup_section, "speedups"),
              "compile": (compile_section, "torch_compile"), "onnx": (onnx_section, "onnx"),
              "evaluation": (evaluation_section, "evaluation")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 8, 3 runs (default: batch 32, 5 runs)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"), help="JSON results file")
    parser.add_argument("--markdown", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                        help="markdown file whose sections this script updates ('' to skip)")
    parser.add_argument("--batch", type=int, help="override the batch size")
    parser.add_argument("--runs", type=int, help="override the number of timed runs")
    parser.add_argument("--aux-batch", type=int, default=8,
                        help="batch of the speed-up, torch.compile and ONNX figures (default 8)")
    parser.add_argument("--aux-runs", type=int, default=3, help="timed runs of those figures (default 3)")
    parser.add_argument("--only", nargs="+", choices=[*IN_PROCESS, *CHILD_SCRIPTS],
                        help="run only these parts (default: all); the others keep their figures from the last run")
    parser.add_argument("--compile-timeout", type=int, help="seconds for the torch.compile child (default 400; quick 240)")
    parser.add_argument("--render", metavar="JSON", help="measure nothing: rewrite this script's RESULTS.md "
                        "sections from a results JSON (e.g. benchmarks/results.json)")
    parser.add_argument("--_compile-child", dest="compile_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch = args.batch or (8 if args.quick else 32)
    args.runs = args.runs or (3 if args.quick else 5)
    args.compile_timeout = args.compile_timeout or (240 if args.quick else 400)
    if args.compile_child:
        compile_child(args.batch, args.runs, args.device, args.compile_child)
        return 0
    if args.render:  # no measuring: rewrite our RESULTS.md sections from a results JSON
        if not Path(args.render).is_file():
            parser.error(f"--render {args.render}: no such file (a results JSON written by this script, "
                         "e.g. benchmarks/results.json)")
        target = Path(args.markdown or BENCH_DIR / "RESULTS.md")
        update_markdown(target, markdown_sections(json.loads(Path(args.render).read_text())))
        log(f"rendered {args.render} into {target}")
        return 0

    started = time.perf_counter()
    earlier = {}
    if args.only and Path(args.out).exists():  # a partial run updates the parts it ran, keeps the rest
        earlier = json.loads(Path(args.out).read_text())
    results = {**earlier, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
               "settings": {"mode": "quick" if args.quick else "default", "device": args.device,
                            "batch": args.batch, "runs": args.runs, "aux_batch": args.aux_batch,
                            "aux_runs": args.aux_runs}}
    parts = args.only or [*IN_PROCESS, *CHILD_SCRIPTS]
    loads = results.setdefault("load_average_1min", {})
    for part in parts:
        if part in CHILD_SCRIPTS:
            fn, key = (lambda a, r, part=part: child_section(part, a, r)), part
        else:
            fn, key = IN_PROCESS[part]
        before, t0, date = os.getloadavg()[0], time.perf_counter(), time.strftime("%Y-%m-%d %H:%M")
        fn(args, results)
        loads[key] = {"start": before, "end": os.getloadavg()[0], "wall_s": time.perf_counter() - t0,
                      "date": date, "settings": dict(results["settings"])}
    for part, (script, json_name, _) in CHILD_SCRIPTS.items():  # scripts not run now: their last run's figures
        path = BENCH_DIR / json_name
        if part not in parts and path.is_file():
            results[part] = {"status": "from an earlier run", "script": script, **json.loads(path.read_text())}
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["total_s"] = time.perf_counter() - started

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(BENCH_DIR))
    from results_md import write_json

    write_json(out, results)
    log(f"wrote {out} ({results['total_s']:.0f} s)")
    if args.markdown:
        ran = set(parts)  # rewrite only the sections of parts measured now
        update_markdown(Path(args.markdown), {heading: body for heading, body in markdown_sections(results).items()
                                              if ran & SECTION_PARTS[heading]})
        log(f"updated {args.markdown}")
    target = results.get("throughput", {}).get("target")
    if target:
        log(f"target {'met' if target['met'] else 'NOT met'}: ratio {target['throughput_ratio']:.3f} "
            f"(needed >= {target['needed']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
