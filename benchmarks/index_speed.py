"""Index build throughput against the bare encoder on the same images (not a test: prints numbers).

`priorclip index` decodes images in worker processes, runs the model, commits each batch to
SQLite and finally builds the FAISS structure. If decoding or storage were the bottleneck, the
index would embed images more slowly than the model alone can: this script measures

    ratio = (images/s of `build_index`, wall clock, everything included)
          / (images/s of the encoder alone on the same images, already decoded and in memory)

on two inputs: UCM-captions images (256 x 256 JPEG files) and a GeoTIFF scene made here with
rasterio, cut into 256-px tiles (windowed reads). Target: ratio >= 0.9. Runs alternate
(bare, index, bare, index, ...) and the medians are compared, so a load change hits both.

    .venv/bin/python benchmarks/index_speed.py                          # paper's closed model, ~6 min
    .venv/bin/python benchmarks/index_speed.py --model priorclip-closed-small --images 1024
    .venv/bin/python benchmarks/index_speed.py --markdown              # also results_index.json + RESULTS.md
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SECTION = "## Index build throughput"


def make_scene(path: Path, side: int, seed: int = 0) -> None:
    """A 3-band uint8 GeoTIFF in UTM 33N with texture (so compression and decoding do real work)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    base = (np.sin(xx / 17.0) + np.cos(yy / 23.0)) * 40 + 128
    bands = [np.clip(base + rng.normal(0, 25, base.shape) + 20 * b, 0, 255).astype(np.uint8) for b in range(3)]
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500_000, 4_600_000, 0.5, 0.5), tiled=True, compress="deflate") as ds:
        for b, band in enumerate(bands, 1):
            ds.write(band, b)


def bare_encoder_seconds(encoder, tensors, batch_size: int) -> float:
    import torch

    t = time.perf_counter()
    for start in range(0, len(tensors), batch_size):
        encoder.embed_images(torch.stack(tensors[start:start + batch_size]))
    return time.perf_counter() - t


def decoded_inputs(paths: list[Path], encoder, tile: int) -> list:
    """What the indexer would feed the model, decoded once up front (not timed) by the indexer's
    own per-item reader (`search.embed.ItemDataset`)."""
    from priorclip.search.embed import ItemDataset
    from priorclip.search.sources import plan_file

    items = []
    for p in paths:
        plan = plan_file(str(p), tile, tile)
        for it in plan.items:  # as the store hands items to the indexer: a window only for tiles
            items.append({"id": len(items), "path": str(p), "window": it["window"] if it["kind"] == "tile" else None,
                          "stretch": plan.stretch})
    dataset = ItemDataset(items, encoder.transform)
    return [dataset[i][1] for i in range(len(dataset))]


def measure(name: str, paths: list[Path], encoder, args, work: Path) -> dict:
    from priorclip.search.index import build_index

    tensors = decoded_inputs(paths, encoder, args.tile_size)
    n = len(tensors)
    bare_encoder_seconds(encoder, tensors[:args.batch_size], args.batch_size)  # warm-up
    bare, full = [], []
    for r in range(args.runs):
        bare.append(bare_encoder_seconds(encoder, tensors, args.batch_size))
        out = work / f"{name}-{r}"
        t = time.perf_counter()
        info = build_index([str(p) for p in paths], out, encoder, model_spec=args.model, tile_size=args.tile_size,
                           batch_size=args.batch_size, workers=args.workers, progress=False, log=lambda *_: None)
        full.append(time.perf_counter() - t)
        assert info["counts"]["items"] == n, (info["counts"], n)
        shutil.rmtree(out)
        print(f"  {name} run {r + 1}: encoder alone {n / bare[-1]:.1f} img/s, build_index {n / full[-1]:.1f} img/s",
              flush=True)
    b, f = float(np.median(bare)), float(np.median(full))
    return {"input": name, "items": n, "encoder_img_s": round(n / b, 2), "index_img_s": round(n / f, 2),
            "ratio": round(b / f, 3), "runs": args.runs}


def markdown(res: dict) -> str:
    lines = [f"Machine: {res['machine']}, torch threads {res['torch_threads']}, load average "
             f"{res['loadavg'][0]:.2f} at start; {res['date']}. Model `{res['model']}` (random weights), batch "
             f"{res['batch_size']}, {res['workers']} decoding workers, median of {res['runs']} alternating runs. "
             "Written by `benchmarks/index_speed.py --markdown`.", "",
             "| input | items | encoder alone img/s | `build_index` img/s (all included) | ratio |",
             "|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['input']} | {r['items']} | {r['encoder_img_s']:.1f} | {r['index_img_s']:.1f} | "
                     f"**{r['ratio']:.2f}** |")
    lines += ["", "Target: ratio >= 0.9 (decoding in worker processes, SQLite commits and the FAISS build "
              "must not be the bottleneck). On two cores the decoding workers take CPU time from the model; "
              "on a GPU they overlap completely."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="priorclip-closed", help="model name or checkpoint (default: the paper's closed model)")
    ap.add_argument("--data", default=os.environ.get("PRIORCLIP_SHARED_DIR", str(HERE.parent.parent / "shared"))
                    + "/data/ucm-captions/images")
    ap.add_argument("--images", type=int, default=192, help="UCM images to index (default 192)")
    ap.add_argument("--scene-side", type=int, default=4096, help="GeoTIFF side in pixels (default 4096 = 256 tiles)")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="as `priorclip index` (default)")
    ap.add_argument("--runs", type=int, default=2, help="alternating runs of each (default 2)")
    ap.add_argument("--markdown", action="store_true", help="write results_index.json and the RESULTS.md section")
    ap.add_argument("--results", default=None, help="markdown file for the section (default benchmarks/RESULTS.md; "
                                                    "'' for the JSON only)")
    args = ap.parse_args(argv)

    import torch

    from priorclip.search.encoders import load_encoder

    warnings.filterwarnings("ignore", message=".*random weights.*")
    encoder = load_encoder(args.model)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "torch_threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()), "model": args.model,
           "batch_size": args.batch_size, "workers": args.workers, "runs": args.runs, "rows": []}
    with tempfile.TemporaryDirectory(prefix="priorclip-index-speed-") as tmp:
        work = Path(tmp)
        images = sorted(p for p in Path(args.data).rglob("*") if p.suffix.lower() in {".tif", ".tiff", ".jpg", ".png"})
        if images:
            step = max(1, len(images) // args.images)
            res["rows"].append(measure(f"UCM-captions images ({images[0].suffix.lstrip('.').upper()} files)", images[::step][:args.images], encoder, args, work))
        else:
            print(f"no images under {args.data}: UCM part skipped", file=sys.stderr)
        scene = work / "scene.tif"
        make_scene(scene, args.scene_side)
        res["rows"].append(measure(f"GeoTIFF {args.scene_side} px scene, {args.tile_size} px tiles", [scene],
                                   encoder, args, work))
    print(markdown(res))
    if args.markdown:
        sys.path.insert(0, str(HERE))
        from results_md import save_results

        save_results("results_index.json", res, SECTION, markdown(res), "benchmarks/index_speed.py --markdown",
                     markdown=args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
