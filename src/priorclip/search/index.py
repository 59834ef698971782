"""Build, update and merge search indexes.

`build_index` is incremental and resumable by construction:
  1. walk the paths and compare each file's (path, size, mtime) with what the store already has:
     unchanged files keep their items and vectors, new or changed files are (re)planned, files
     gone from a walked folder are dropped; so are rasters whose `--bands` choice changed, or
     that an index from before band semantics holds without one;
  2. embed every item that has no vector yet, committing each batch; items whose valid fraction
     is below `min_valid` are recorded but not embedded (a new `min_valid` re-sorts the measured
     items without decoding them again);
  3. rebuild the FAISS structure from the stored vectors and publish it with report.json and
     index.json (all written to temporary files first, then renamed, index.json last).
A run killed anywhere, or stopped by a full disk, leaves the previous index searchable and is
finished by running the same command again.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import sqlite3
import time
from pathlib import Path

import json

import priorclip
from priorclip.data.bands import parse_bands, request_text
from priorclip.data.rasters import STRETCH_PERCENTILES
from priorclip.errors import ConfigError, DataError
from priorclip.search import ann
from priorclip.search.embed import embed_items
from priorclip.search.sources import _short, check_paths, is_raster, plan_file, shard_of, strip_path, walk
from priorclip.search.store import (DB_NAME, DISK_FULL_ERRNOS, FAISS_NAME, FORMAT_VERSION, INDEX_JSON, RERANK_FILES,
                                    REPORT_NAME, Store, json_bytes, publish, read_index_json,
                                    remove_stale_temporaries, write_error, write_faiss)

DEFAULT_TILE = 256
# A tile less than half valid is mostly fill: its vector describes the flat fill and the footprint
# edge more than the scene, so it would surface as noise for every query. Lower it (0.1, or 0: any
# valid pixel) to keep ragged scene edges searchable at that cost.
DEFAULT_MIN_VALID = 0.5


def parse_shard(text: str | None, env: dict | None = None) -> tuple[int, int] | None:
    """`--shard RANK/WORLD`, else torchrun's RANK/WORLD_SIZE when WORLD_SIZE > 1, else None."""
    env = os.environ if env is None else env
    if text is None:
        world = int(env.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        text = f"{env.get('RANK', '0')}/{world}"
    try:
        rank_s, world_s = text.split("/")
        rank, world = int(rank_s), int(world_s)
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected RANK/WORLD, e.g. 0/4") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"--shard {text!r}: need 0 <= RANK < WORLD")
    return rank, world


def part_dir(out: str | Path, rank: int, world: int) -> Path:
    return Path(out) / f"part-{rank:05d}-of-{world:05d}"


@contextlib.contextmanager
def _locked(directory: Path):
    """One writer per index directory; a second `priorclip index` on it fails fast. A disk that
    fills up anywhere in the run (SQLite commits, the published files) ends it with one clear
    error; temporaries of a killed earlier run are removed once the lock is held.

    A POSIX record lock (lockf), not flock: it belongs to this process alone, so the DataLoader
    workers it forks do not share it, and a run killed with -9 frees the directory at once rather
    than when its orphaned workers notice, ~5 s later (meanwhile a rerun was refused)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fh = open(directory / ".lock", "w")
        try:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise DataError(f"{directory} is being written by another `priorclip index` run") from None
            remove_stale_temporaries(directory)
            yield
        finally:
            fh.close()
    except sqlite3.OperationalError as exc:
        if (getattr(exc, "sqlite_errorname", None) or "").startswith(("SQLITE_FULL", "SQLITE_IOERR")):
            raise write_error(exc, directory / DB_NAME, directory) from exc
        raise
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise write_error(exc, exc.filename or directory, directory) from exc
        raise


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _identity(model: dict) -> dict:
    return {k: model.get(k) for k in ("name", "embed_dim", "checkpoint_sha256")}


def build_index(paths: list[str | Path], out: str | Path, encoder, *, model_spec: str | None = None,
                tile_size: int = DEFAULT_TILE, tile_stride: int | None = None, batch_size: int = 64,
                workers: int = 0, index_type: str = ann.DEFAULT_INDEX_TYPE, shard: tuple[int, int] | None = None,
                retry_failed: bool = False, bands=None, min_valid: float = DEFAULT_MIN_VALID,
                backend: dict | None = None, progress: bool = True, log=print) -> dict:
    """Embed every image under `paths` into the index directory `out` (see module doc).

    `bands` ("red,green,blue", "3,2,1" or a tuple) chooses the rasters' RGB bands instead of
    their own labels (`priorclip.data.bands`); `min_valid` is the smallest share of valid
    (not nodata) pixels an item needs to be embedded; an item without any is never embedded.
    Returns the index.json written. With `shard=(rank, world)` only this rank's files are
    embedded, into `out/part-RANK-of-WORLD`; merge the parts with `merge_indexes`. `backend`
    (`milvus_spec(...)`) keeps the vectors in a Milvus collection instead of a FAISS file; an index
    keeps the backend it was made with when a later run names none.
    """
    request = parse_bands(bands)
    if not 0.0 <= float(min_valid) <= 1.0:
        raise ConfigError(f"--min-valid {min_valid}: must be a fraction between 0 and 1 (default {DEFAULT_MIN_VALID})")
    min_valid = float(min_valid)
    tile_stride = tile_stride or tile_size
    if tile_size < 16 or tile_stride < 1:
        raise ConfigError(f"--tile-size {tile_size} / --tile-stride {tile_stride}: need tile size >= 16 and stride >= 1")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    if index_type not in ann.INDEX_TYPES:
        raise ConfigError(f"--index-type {index_type!r}: choose one of {', '.join(ann.INDEX_TYPES)}")
    check_paths(paths)  # before `_locked` creates the directory
    out = Path(out)
    if shard is not None:
        out = part_dir(out, *shard)
    model = dict(encoder.describe())
    model["spec"] = model_spec or model.get("checkpoint") or model.get("name")
    settings = {"model": _identity(model), "tile_size": tile_size, "tile_stride": tile_stride}

    with _locked(out):
        store = Store(out)
        old = store.get_meta("settings")
        if old is not None and old != settings:
            raise ConfigError(
                f"{out} was built with {old}, this run asks for {settings}; use a new --out directory "
                "(vectors of different models or tilings cannot share an index)")
        store.set_meta("settings", settings)
        backend = backend or store.get_meta("backend") or {"kind": "faiss"}
        if backend["kind"] == "milvus":
            # every writer of a shared collection owns an id range: shards write side by side
            from priorclip.search.backends.milvus_backend import ID_RANGE

            rank = shard[0] if shard is not None else 0
            backend = {**backend, "id_range": [rank * ID_RANGE, (rank + 1) * ID_RANGE]}
            store.start_ids_at(rank * ID_RANGE)
        store.set_meta("backend", backend)
        created = store.get_meta("created") or _now()
        store.set_meta("created", created)

        found, skipped, roots = walk(paths)
        if shard is not None:
            found = [f for f in found if shard_of(f.path, f.root, shard[1]) == shard[0]]
        root_ids = store.root_ids(roots)
        known = store.files_by_path()
        walked_dirs = [os.path.realpath(p) for p in paths if Path(p).is_dir()]
        found_paths = {f.path for f in found}
        gone = [r["file_id"] for p, r in known.items() if p not in found_paths
                and any(p.startswith(d.rstrip(os.sep) + os.sep) for d in walked_dirs)]
        store.delete_files(gone)

        planned = unchanged = failed_now = 0
        todo = []
        for f in found:
            row = known.get(f.path)
            if row is not None and row["size"] == f.size and row["mtime_ns"] == f.mtime_ns:
                if not (retry_failed and row["status"] == "failed") and _same_bands(row, request):
                    unchanged += 1
                    continue
            todo.append(f)
        bar = None
        if progress and len(todo) > 200:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="scanning", unit="file", dynamic_ncols=True)
        for f in todo:
            try:
                plan = plan_file(f.path, tile_size, tile_stride, request)
                store.put_file(f.path, root_ids[f.root], f.size, f.mtime_ns, plan=plan, raster=is_raster(f.path))
                planned += 1
            except DataError as exc:
                store.put_file(f.path, root_ids[f.root], f.size, f.mtime_ns, raster=is_raster(f.path),
                               error=strip_path(_short(exc), f.path))
                failed_now += 1
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

        if retry_failed:
            store.reset_failed_items()
        revived, dropped = store.apply_min_valid(min_valid)
        store.set_meta("min_valid", min_valid)
        pending = store.pending_items()
        log(f"[index] {len(found)} files: {unchanged} unchanged, {planned} new or changed, "
            f"{failed_now} unreadable, {len(gone)} removed; {len(pending)} items to embed"
            + (f" ({revived} allowed and {dropped} dropped by --min-valid {min_valid})" if revived or dropped else ""))
        commit, engine, written = store.commit_batch, None, [0]
        if backend["kind"] == "milvus":  # each batch goes to the shared collection as soon as it is stored
            from priorclip.search.backends.milvus_backend import MilvusBackend

            engine = MilvusBackend.create_or_open(backend, int(model["embed_dim"]), store)

            def commit(ids, vectors, failures=(), **kw):
                store.commit_batch(ids, vectors, failures, **kw)
                engine.write_batch(ids, vectors)
                written[0] += len(ids)
        stats = embed_items(encoder, pending, commit, batch_size=batch_size, workers=workers,
                            progress=progress, min_valid=min_valid)
        info, ann_files = _finish(store, out, model, settings, index_type, created, log, backend=backend,
                                  engine=engine)
        if backend["kind"] == "milvus":  # rows this run wrote: its batches, and what the final sync added
            info["backend"]["last_sync"]["written"] = written[0] + info["backend"]["last_sync"]["inserted"]
        info["last_run"] = {
            "files_found": len(found), "files_unchanged": unchanged, "files_planned": planned,
            "files_removed": len(gone), "embedded": stats["embedded"], "failed": stats["failed"] + failed_now,
            "below_min_valid": stats["nodata"], "bands": request_text(request),
            "seconds": round(stats["seconds"], 3),
            "images_per_s": round(stats["embedded"] / stats["seconds"], 2) if stats["seconds"] else None,
        }
        info["shard"] = {"rank": shard[0], "world": shard[1]} if shard else None
        report = {"failed": store.failures(), "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]}
        _publish(out, ann_files, report, info)
        store.close()
    return info


def _same_bands(row, request) -> bool:
    """Whether a stored file was planned with this run's `--bands` (photos ignore it; a raster
    from an index without band records is planned again so that it gets them)."""
    if not row["raster"] or row["status"] == "failed":
        return True
    rgb = row["rgb"] if "rgb" in row.keys() else None
    if rgb is None:
        return False
    return json.loads(rgb).get("request") == request_text(request)


def _publish(out: Path, ann_files: dict, report: dict | None, info: dict) -> None:
    """The search structure's files (`_finish`; none for a Milvus index), report.json and
    index.json replaced together (see `store.publish`); re-rank files of an earlier `ivfpq` that
    this index no longer names are removed once index.json is in place."""
    files = dict(ann_files)
    if report is not None:
        files[REPORT_NAME] = json_bytes(report)
    files[INDEX_JSON] = json_bytes(info)
    publish(out, files)
    for name in RERANK_FILES:
        if name not in files:
            (out / name).unlink(missing_ok=True)


def _finish(store: Store, out: Path, model: dict, settings: dict, index_type: str, created: str, log,
            merged_from: list[str] | None = None, backend: dict | None = None,
            engine=None) -> tuple[dict, dict]:
    """index.json's content and the FAISS structure rebuilt from the stored vectors, as files for
    `_publish` (not yet written: the FAISS file, and for `ivfpq` the vectors it re-ranks from);
    with a Milvus backend, the collection (`engine`, if the run has it open) brought in line with
    the catalogue instead, and no files."""
    dim = int(model["embed_dim"])
    params, files = None, {}
    if backend and backend["kind"] == "milvus":
        from priorclip.search.backends.milvus_backend import MilvusBackend

        t = time.perf_counter()
        synced = (engine or MilvusBackend.create_or_open(backend, dim, store)).sync(log)
        backend = {**backend, "last_sync": {**synced, "seconds": round(time.perf_counter() - t, 3)}}
    else:
        ids, vecs = store.all_vectors(dim)
        t = time.perf_counter()
        index, params = ann.build(vecs, ids, index_type)
        rerank = None
        if index_type in ann.IVFPQ_TYPES:  # the vectors it re-ranks from, in id order (+ 8-bit copies)
            rerank = ann.RerankFile.from_arrays(ids, vecs, ann.train_sq8(vecs) if index_type == "ivfpq-sq8" else None)
        params["build_seconds"] = round(time.perf_counter() - t, 3)
        if index_type != "flat":
            params["recall_at_10"] = ann.recall_at_k(index, vecs, ids, k=10, params=params, rerank_file=rerank)
            log(f"[index] {index_type} recall@10 against exact search: {params['recall_at_10']:.3f} "
                f"({len(ids)} vectors)" if params["recall_at_10"] is not None else "[index] empty index")
        else:
            params["recall_at_10"] = 1.0
        params["file"] = FAISS_NAME
        files[FAISS_NAME] = lambda fh: write_faiss(index, fh)
        if rerank is not None:
            rerank_files, params["rerank"] = rerank.writers()
            files = {**rerank_files, **files}  # renamed before the FAISS file that needs them
    counts = store.counts()
    info = {
        "format": "priorclip-search-index",
        "format_version": FORMAT_VERSION,
        "priorclip_version": priorclip.__version__,
        "created": created,
        "updated": _now(),
        "model": model,
        "embed_dim": dim,
        "tiling": {"tile_size": settings["tile_size"], "tile_stride": settings["tile_stride"],
                   "stretch_percentiles": list(STRETCH_PERCENTILES), "min_valid": store.get_meta("min_valid"),
                   "invalid_pixels": "filled with the mean colour of the item's valid pixels"},
        "roots": sorted(store.roots().values()),
        "counts": counts,
        "backend": backend or {"kind": "faiss"},
    }
    if params is not None:
        info["faiss"] = params
    if merged_from is not None:
        info["merged_from"] = merged_from
    log(f"[index] {counts['items']} items ({counts['tiles']} tiles from {counts['scenes']} scenes) in {out}; "
        f"{counts['failed_files']} unreadable files, {counts['failed_items']} unreadable items "
        f"(see {out / REPORT_NAME})"
        + (f"; {counts['nodata_items']} below --min-valid not indexed" if counts.get("nodata_items") else ""))
    return info, files


def merge_indexes(parts: list[str | Path], out: str | Path, *, index_type: str = ann.DEFAULT_INDEX_TYPE, log=print) -> dict:
    """Combine shard directories (same model and tiling) into one new index at `out`."""
    if not parts:
        raise ConfigError("--merge needs at least one part directory")
    out = Path(out)
    if (out / INDEX_JSON).exists() or (out / "items.sqlite").exists():
        raise ConfigError(f"--out {out} already holds an index; merge into a new directory")
    infos = [read_index_json(p) for p in parts]
    first = infos[0]
    want = (_identity(first["model"]), first["tiling"]["tile_size"], first["tiling"]["tile_stride"])
    for p, inf in zip(parts, infos):
        got = (_identity(inf["model"]), inf["tiling"]["tile_size"], inf["tiling"]["tile_stride"])
        if got != want:
            raise ConfigError(f"part {p} was built with a different model or tiling ({got}) than {parts[0]} ({want})")
    settings = {"model": want[0], "tile_size": want[1], "tile_stride": want[2]}
    with _locked(out):
        store = Store(out)
        store.set_meta("settings", settings)
        created = _now()
        store.set_meta("created", created)
        min_valid = {inf["tiling"].get("min_valid") for inf in infos}
        store.set_meta("min_valid", min_valid.pop() if len(min_valid) == 1 else None)  # None: parts differ
        con = store.conn
        dup = 0
        for p in parts:
            src = Store(p, readonly=True)
            root_map = store.root_ids(src.roots().values())
            src_roots = src.roots()
            with con:
                for f in src.conn.execute("SELECT * FROM files ORDER BY file_id"):
                    if con.execute("SELECT 1 FROM files WHERE path=?", (f["path"],)).fetchone():
                        dup += 1
                        continue
                    cur = con.execute(
                        "INSERT INTO files(path, root_id, size, mtime_ns, kind, raster, width, height, bands, dtype, "
                        "crs, stretch, rgb, status, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (f["path"], root_map[src_roots[f["root_id"]]], f["size"], f["mtime_ns"], f["kind"],
                         f["raster"], f["width"], f["height"], f["bands"], f["dtype"], f["crs"], f["stretch"],
                         f["rgb"] if "rgb" in f.keys() else None, f["status"], f["error"]))
                    new_file = cur.lastrowid
                    for it in src.conn.execute(
                            "SELECT items.*, vectors.vec FROM items LEFT JOIN vectors USING(id) WHERE file_id=? "
                            "ORDER BY id", (f["file_id"],)):
                        c2 = con.execute(
                            "INSERT INTO items(file_id, kind, col, row, w, h, bounds, footprint, state, error, "
                            "valid_fraction) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            (new_file, it["kind"], it["col"], it["row"], it["w"], it["h"], it["bounds"],
                             it["footprint"], it["state"], it["error"],
                             it["valid_fraction"] if "valid_fraction" in it.keys() else None))
                        if it["vec"] is not None:
                            con.execute("INSERT INTO vectors(id, vec) VALUES (?, ?)", (c2.lastrowid, it["vec"]))
            src.close()
        if dup:
            log(f"[index] {dup} files appeared in more than one part; kept the first")
        model = dict(first["model"])
        info, ann_files = _finish(store, out, model, settings, index_type, created, log,
                                  merged_from=[str(Path(p).resolve()) for p in parts])
        info["shard"] = None
        _publish(out, ann_files, {"failed": store.failures(), "skipped": []}, info)
        store.close()
    return info


def rebuild_ann(directory: str | Path, index_type: str, log=print) -> dict:
    """Switch an existing index to another FAISS type without re-embedding."""
    directory = Path(directory)
    info = read_index_json(directory)
    if info.get("backend", {}).get("kind") == "milvus":
        raise ConfigError(f"{directory} keeps its vectors in Milvus: there is no FAISS file to rebuild "
                          "(a collection's index type is chosen with --milvus-index when it is created)")
    with _locked(directory):
        store = Store(directory)
        settings = store.get_meta("settings")
        new, ann_files = _finish(store, directory, info["model"], settings, index_type, info["created"], log,
                                 merged_from=info.get("merged_from"))
        for key in ("last_run", "shard"):
            new[key] = info.get(key)
        _publish(directory, ann_files, None, new)
        store.close()
    return new
