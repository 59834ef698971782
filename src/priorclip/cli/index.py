"""`priorclip index`: embed an image archive (folders of images, GeoTIFF scenes) into a search index."""
from __future__ import annotations

import os

from priorclip.cli.model_args import add_model_arguments
from priorclip.search import ann
from priorclip.search.backends import BACKENDS

HELP = "embed every image under folders (GeoTIFF scenes cut into tiles) into a search index"
DESCRIPTION = """\
Embed every image under PATH... with a trained model and write a self-describing index directory
(index.json, items.sqlite, vectors.faiss, report.json). Re-running the same command embeds only
new or changed files and finishes a run that was interrupted.

Unreadable files are skipped: the first few are named on stderr, all of them in OUT/report.json,
and the exit status is 1 (0: every file indexed; 2: error, e.g. a PATH that does not exist, which
is refused before anything is written to OUT).

examples:
  priorclip index /data/archive --model runs/priorclip-small/best --out idx/
  priorclip index scenes/ --model CKPT --out idx/ --tile-size 256 --tile-stride 128
  priorclip index scenes/ --model CKPT --out idx/ --bands nir,red,green      # false colour by band name
  priorclip index s2/ --model CKPT --out idx/ --bands 4,3,2 --min-valid 0.2  # by number; keep ragged edges
  priorclip index /data/archive --model CKPT --out idx/ --index-type flat   # float32, bit-exact scores
  priorclip index /data/archive --model CKPT --out idx/ --index-type hnsw   # approximate, for millions
  priorclip index /data/archive --model CKPT --out idx/ --index-type ivfpq-sq8   # 10 M+: ~3 GB RAM at 10 M
  priorclip index /data/archive --model CKPT --out idx/ --backend milvus --uri idx.milvus.db   # Milvus Lite
  priorclip index /data/archive --model CKPT --out idx/ --backend milvus --uri http://milvus:19530
  # four machines, then one merge:
  priorclip index /data/archive --model CKPT --out parts/ --shard 0/4      # ... 1/4, 2/4, 3/4
  priorclip index --merge parts/part-* --out idx/
"""


def add_arguments(p) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders to index (walked recursively)")
    add_model_arguments(p, required=False)
    p.add_argument("--out", required=True, help="index directory to create or update")
    p.add_argument("--tile-size", type=int, default=256, help="tile side in pixels for scenes (default 256)")
    p.add_argument("--tile-stride", type=int, default=None, help="step between tiles (default: tile size, no overlap)")
    p.add_argument("--bands", metavar="B1,B2,B3",
                   help="raster bands to show as red, green, blue: names the files have (red,green,blue; B4,B3,B2; "
                        "nir,red,green) or 1-based numbers (3,2,1); one band gives grey. Default: the bands each "
                        "file labels red, green, blue (colour interpretation, descriptions), B4,B3,B2 for "
                        "Sentinel-2, else 1,2,3. Photos (JPEG, PNG...) keep their own RGB")
    p.add_argument("--min-valid", type=float, default=None, metavar="FRACTION",
                   help="skip tiles with fewer valid pixels than this (nodata, mask, alpha; default 0.5: a tile "
                        "mostly fill describes the fill, not the scene); 0 keeps every tile with a valid pixel")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="decoding processes (default min(4, CPUs); 0 decodes in the main process)")
    p.add_argument("--index-type", choices=list(ann.INDEX_TYPES), default=ann.DEFAULT_INDEX_TYPE,
                   help=ann.INDEX_TYPE_HELP)
    p.add_argument("--shard", metavar="RANK/WORLD",
                   help="embed only this shard into OUT/part-RANK-of-WORLD (default from torchrun's RANK/WORLD_SIZE)")
    p.add_argument("--merge", nargs="+", metavar="PART_DIR", help="merge finished shard directories into --out")
    p.add_argument("--retry-failed", action="store_true", help="try unreadable files again even if unchanged")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    eng = p.add_argument_group("vector backend (default: a FAISS file in --out)")
    eng.add_argument("--backend", choices=list(BACKENDS), default=None,
                     help="where vectors are stored and searched; a later run keeps the index's backend (default faiss)")
    eng.add_argument("--uri", default=None,
                     help="Milvus: a file for Milvus Lite (in-process, e.g. idx.milvus.db) or http://HOST:19530")
    eng.add_argument("--collection", default=None, help="Milvus collection (default: from the --out folder's name)")
    eng.add_argument("--milvus-index", default=None, metavar="TYPE",
                     help="Milvus index type when the collection is created: HNSW (default), IVF_FLAT, IVF_PQ, "
                          "IVF_SQ8, FLAT, AUTOINDEX, or GPU_* where the server has GPUs")
    eng.add_argument("--milvus-params", default=None, metavar="JSON",
                     help='its build parameters, e.g. \'{"M": 16, "efConstruction": 200}\' or \'{"nlist": 1024, "m": 16}\'')


def run(args) -> int:
    from pathlib import Path

    from priorclip.cli.exit_status import report_skipped
    from priorclip.errors import ConfigError
    from priorclip.search.index import DEFAULT_MIN_VALID, build_index, merge_indexes, parse_shard, part_dir
    from priorclip.search.sources import check_paths
    from priorclip.search.store import REPORT_NAME, read_report

    out = Path(args.out)
    if args.merge:
        if args.paths:
            raise ConfigError("--merge takes part directories only; drop the PATH arguments")
        info = merge_indexes(args.merge, out, index_type=args.index_type)
    else:
        if not args.paths:
            raise ConfigError("give at least one PATH to index (or --merge PART_DIR...)")
        if not args.model:
            raise ConfigError("--model is required: a checkpoint directory (or a model name with --random-weights)")
        check_paths(args.paths)  # a typo fails now, not after the model has loaded
        from priorclip.data.bands import parse_bands

        parse_bands(args.bands)  # so does a malformed --bands
        min_valid = DEFAULT_MIN_VALID if args.min_valid is None else args.min_valid
        if not 0.0 <= min_valid <= 1.0:
            raise ConfigError(f"--min-valid {args.min_valid}: must be a fraction between 0 and 1")
        shard = parse_shard(args.shard)
        backend = None
        if args.backend == "milvus":
            from priorclip.search.backends.milvus_backend import milvus_spec

            backend = milvus_spec(args.uri, out, args.collection, args.milvus_index, args.milvus_params)
        elif args.uri or args.collection or args.milvus_index or args.milvus_params:
            raise ConfigError("--uri, --collection and --milvus-* go with --backend milvus")
        from priorclip.search.encoders import load_encoder

        encoder = load_encoder(args.model, device=args.device, random_weights=args.random_weights)
        info = build_index(args.paths, out, encoder, model_spec=args.model, tile_size=args.tile_size,
                           tile_stride=args.tile_stride, batch_size=args.batch_size, workers=args.workers,
                           index_type=args.index_type, shard=shard, retry_failed=args.retry_failed,
                           bands=args.bands, min_valid=min_valid, backend=backend, progress=not args.no_progress)
        if shard is not None:
            out = part_dir(out, *shard)
    skipped = read_report(out)
    if "faiss" in info:
        where = f"FAISS {info['faiss']['type']}, recall@10 {info['faiss']['recall_at_10']}"
    else:
        b = info["backend"]
        where = f"Milvus {b['uri']} collection {b['collection']}, {b['index']['type']}"
    print(f"index ready: {info['counts']['items']} items, {len(skipped)} input(s) skipped ({where})")
    return report_skipped("index", skipped, f"see {out / REPORT_NAME}")
