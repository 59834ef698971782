"""Archive-scale search through the index's own backends, with and without a bbox filter.

`search_speed.py --archive` runs this part: for each size it writes a real index directory (an
items.sqlite catalogue of GeoTIFF-like tiles laid on a lon/lat grid, their vectors, the R*Tree)
and searches it through `FaissBackend` / `MilvusBackend` exactly as `priorclip serve` does:

  faiss flat16   exhaustive float16 scan split over the cores (the default index type)
  faiss ivfpq    PQ codes in RAM (d/8 bytes a vector), candidates re-ranked from the memory-mapped
                 re-rank file (or, as an older index, from items.sqlite); "cold cache" rows drop
                 that file from the page cache before every query
  faiss ivfpq-sq8  the same + 8-bit copies of the vectors in RAM (d bytes a vector): they rank the
                 PQ candidates and only their best k + shortlist are read from the re-rank file
  milvus <TYPE>  Milvus Lite (the in-process engine, a file) with its own vector index

Vectors: `--vectors FILE.npz` from `embed_views.py` (real model embeddings of UCM views; without
it, the clustered synthetic set of search_speed.py). A size larger than the file's views is filled
with derived vectors: a stored view moved by Gaussian noise so that its cosine to its source is the
median cosine between a view and its nearest other view (a new tile as close to an old one as two
real tiles are); the row says how many are real. Queries: held-out views (image search) and
captions of the UCM test images (text search: text embeddings sit apart from image embeddings, a
harder case for approximate indexes). Recall@10 against exact float32 search over the same items
(inside the box for bbox rows). A "city" box holds ~2,000 tiles (ranked exactly from their stored
vectors), a "region" box 5 % of the archive (the ANN ranking filtered).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np

TILES_PER_SCENE = 10_000
CITY_TILES, REGION_SHARE = 2_000, 0.05
LON0, LAT0, LON1, LAT1 = -180.0, -60.0, 180.0, 72.0  # the grid the tiles are laid on


# ---- vectors --------------------------------------------------------------------------------

def load_vectors(path: str | None, dim: int, rng) -> dict:
    """{'base': stored-view candidates [M, D], 'image_q': [Q, D], 'text_q': [Q, D] or None, 'source': str}."""
    if path is None:
        centers = rng.standard_normal((256, dim), dtype=np.float32)
        x = centers[rng.integers(0, 256, 200_000)] + rng.standard_normal((200_000, dim), dtype=np.float32) * 0.6
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return {"base": x[:-200], "image_q": x[-200:], "text_q": None, "source": "clustered synthetic"}
    d = np.load(path)
    images, image_of = d["images"], d["image_of"]
    # image queries: one view of each of 200 test images, kept out of the archive
    test_images = np.flatnonzero(d["image_split"][image_of] == "test")
    first = {}
    for row in test_images:
        first.setdefault(int(image_of[row]), int(row))
    held = np.array(sorted(first.values())[:200])
    keep = np.setdiff1d(np.arange(len(images)), held)
    texts = d["texts"][np.isin(d["text_image"], np.flatnonzero(d["image_split"] == "test"))]
    text_q = texts[rng.choice(len(texts), min(200, len(texts)), replace=False)]
    model = json.loads(str(d["model"]))
    return {"base": images[rng.permutation(keep)], "image_q": images[held], "text_q": text_q,
            "source": f"{len(images):,} real views ({Path(path).name}, model {model.get('checkpoint')})"}


def nearest_cosine(x: np.ndarray, rng, sample: int = 2_000) -> float:
    """Median cosine between a view and its nearest other view."""
    q = x[rng.choice(len(x), min(sample, len(x)), replace=False)]
    best = np.full(len(q), -1.0, np.float32)
    for start in range(0, len(x), 100_000):
        s = q @ x[start:start + 100_000].T
        s[s > 0.99999] = -1  # itself
        best = np.maximum(best, s.max(1))
    return float(np.median(best))


def archive_vectors(base: np.ndarray, n: int, rng, target_cos: float, path: Path) -> tuple[np.memmap, int]:
    """n vectors on disk: the first min(n, len(base)) real, the rest derived. Returns (vectors, real)."""
    dim = base.shape[1]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    real = min(n, len(base))
    out[:real] = base[:real]
    # noise of norm t in the tangent space: cos = 1/sqrt(1+t^2) after renormalising
    t = np.sqrt(max(1.0 / target_cos ** 2 - 1.0, 0.0))
    for start in range(real, n, 200_000):
        m = min(200_000, n - start)
        src = base[rng.integers(0, len(base), m)]
        noise = rng.standard_normal((m, dim), dtype=np.float32)
        noise -= (noise * src).sum(1, keepdims=True) * src
        noise *= t / np.linalg.norm(noise, axis=1, keepdims=True)
        x = src + noise
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return out, real


# ---- the archive's catalogue ----------------------------------------------------------------

def grid(n: int) -> tuple[int, float, float]:
    cols = int(np.ceil(np.sqrt(n * (LON1 - LON0) / (LAT1 - LAT0))))
    rows = int(np.ceil(n / cols))
    return cols, (LON1 - LON0) / cols, (LAT1 - LAT0) / rows


def tile_bounds(i: np.ndarray, n: int) -> np.ndarray:
    cols, dx, dy = grid(n)
    lon, lat = LON0 + (i % cols) * dx, LAT0 + (i // cols) * dy
    return np.stack([lon, lat, lon + dx, lat + dy], axis=1)


def write_catalogue(directory: Path, vectors: np.ndarray, log=print) -> None:
    """items.sqlite as `priorclip index` leaves it: one scene file per TILES_PER_SCENE tiles,
    each tile with its window, lon/lat box and footprint, embedded (state 1) with its vector."""
    from priorclip.search.store import Store

    n = len(vectors)
    store = Store(directory)
    conn = store.conn
    conn.execute("PRAGMA synchronous=OFF")  # a benchmark's bulk load: no fsync per transaction
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB of page cache for the indexes being filled
    root = store.root_ids([str(directory / "scenes")])[str(directory / "scenes")]
    t = time.perf_counter()
    with conn:
        conn.executemany(
            "INSERT INTO files(file_id, path, root_id, size, mtime_ns, kind, raster, width, height, bands, dtype, "
            "crs, status) VALUES (?,?,?,0,0,'scene',1,25600,25600,3,'uint8','EPSG:4326','planned')",
            [(f + 1, str(directory / "scenes" / f"scene_{f:06d}.tif"), root)
             for f in range((n + TILES_PER_SCENE - 1) // TILES_PER_SCENE)])
    for start in range(0, n, 100_000):
        idx = np.arange(start, min(n, start + 100_000))
        boxes = tile_bounds(idx, n)
        rows, vecs = [], []
        for i, (w, s, e, nn) in zip(idx.tolist(), boxes.tolist()):
            k = i % TILES_PER_SCENE
            foot = f"[[{w!r}, {s!r}], [{e!r}, {s!r}], [{e!r}, {nn!r}], [{w!r}, {nn!r}], [{w!r}, {s!r}]]"
            rows.append((i + 1, i // TILES_PER_SCENE + 1, (k % 100) * 256, (k // 100) * 256,
                         f"[{w!r}, {s!r}, {e!r}, {nn!r}]", foot))
            vecs.append((i + 1, np.asarray(vectors[i], np.float32).tobytes()))
        with conn:
            conn.executemany("INSERT INTO items(id, file_id, kind, col, row, w, h, bounds, footprint, state, "
                             "valid_fraction) VALUES (?,?,'tile',?,?,256,256,?,?,1,1.0)", rows)
            conn.executemany("INSERT INTO vectors(id, vec) VALUES (?,?)", vecs)
        if start and start % 1_000_000 == 0:
            log(f"   catalogue: {start:,} of {n:,} items ({time.perf_counter() - t:.0f} s)")
    store.close()


def boxes(n: int, rng, count: int = 20) -> dict[str, list]:
    """`count` city boxes (~CITY_TILES tiles) and region boxes (REGION_SHARE of the tiles)."""
    from priorclip.search.spatial import BBox

    out = {}
    for name, tiles in (("city", CITY_TILES), ("region", int(REGION_SHARE * n))):
        _, dx, dy = grid(n)
        side = int(np.sqrt(tiles))
        w, h = side * dx, side * dy
        out[name] = [BBox(float(lon), float(lat), float(lon + w), float(lat + h)) for lon, lat in
                     zip(rng.uniform(LON0, LON1 - w, count), rng.uniform(LAT0, LAT1 - h, count))]
    return out


def in_box(box, n: int) -> np.ndarray:
    """Row numbers of the tiles whose (rectangular) footprint meets the box."""
    cols, dx, dy = grid(n)
    # tiles touching the box count (footprint tests include edges): floor/floor + 1
    c0, c1 = int(np.floor((box.minlon - LON0) / dx - 1e-9)), int(np.floor((box.maxlon - LON0) / dx + 1e-9)) + 1
    r0, r1 = int(np.floor((box.minlat - LAT0) / dy - 1e-9)), int(np.floor((box.maxlat - LAT0) / dy + 1e-9)) + 1
    rr, cc = np.meshgrid(np.arange(max(r0, 0), r1), np.arange(max(c0, 0), min(c1, cols)), indexing="ij")
    i = (rr * cols + cc).ravel()
    return np.sort(i[i < n])


# ---- measuring ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def item_ids(n: int) -> np.ndarray:
    """Item ids of an archive's rows (row + 1), made once per size: every truth asks for them."""
    return np.arange(1, n + 1, dtype=np.int64)


def exact(vectors: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Item ids (row + 1) of the exact float32 top k, over all rows or the given ones."""
    from priorclip.search import ann

    return ann.exact_topk(queries, vectors, item_ids(len(vectors)), k, rows)


def measure(backend, queries: np.ndarray, truth: np.ndarray, k: int, bboxes=None, budget_s: float = 60.0,
            before=None) -> dict:
    """p50/p99 and recall@k of single queries (query j searches bboxes[j % len]); stops after
    `budget_s` seconds once 20 queries are timed (slow rows: exhaustive 10 M, Milvus Lite).
    `before()` runs ahead of every query, untimed (evict_rerank: a cold page cache)."""
    backend.search(queries[0], k, bbox=None if bboxes is None else bboxes[0])  # warm up
    times, hits = [], []
    start = time.perf_counter()
    for j, q in enumerate(queries):
        if j >= 20 and time.perf_counter() - start > budget_s:
            break
        box = None if bboxes is None else bboxes[j % len(bboxes)]
        if before is not None:
            before()
        t = time.perf_counter()
        found = backend.search(q, k, bbox=box)
        times.append(time.perf_counter() - t)
        hits.append(len({i for i, _ in found} & set(truth[j].tolist())) / k)
    ms = np.array(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "recall_at_10": round(float(np.mean(hits)), 3), "timed": len(ms)}


@contextlib.contextmanager
def paused(pgids, log=print):
    """Stops these process groups (SIGSTOP) while a row is timed and resumes them (SIGCONT)
    after, even on an error: on a shared machine a background job, e.g. a training run, keeps its
    progress but gives the timed queries both cores. A group already gone is skipped."""
    stopped = []
    try:
        for pgid in pgids:
            try:
                os.killpg(pgid, signal.SIGSTOP)
                stopped.append(pgid)
            except ProcessLookupError:
                log(f"   --pause {pgid}: no such process group (finished?); timing beside whatever runs")
        if stopped:
            time.sleep(1.0)  # let the stopped jobs' in-flight work (e.g. a BLAS call on another core) drain
        yield
    finally:
        for pgid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)


def evict_rerank(backend, path: Path):
    """A function that drops the re-rank file's pages from this process and from the OS page
    cache, so the next query reads its candidates' vectors from the disk."""
    import mmap

    fd = os.open(path, os.O_RDONLY)

    def evict():
        backend.rerank.vectors._mmap.madvise(mmap.MADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return evict


def link_rerank(directory: Path, vectors_path: Path, n: int) -> dict:
    """The ivfpq index's re-rank files without a second 10 GB copy: the archive's vectors file is
    already float32 rows in id order (id = row + 1), so it is hard-linked as the file
    `ann.RerankFile.writers` would write."""
    from priorclip.search.store import RERANK_IDS_NAME, RERANK_NAME

    (directory / RERANK_NAME).unlink(missing_ok=True)
    os.link(vectors_path, directory / RERANK_NAME)
    np.save(directory / RERANK_IDS_NAME, item_ids(n))
    return {"file": RERANK_NAME, "ids": RERANK_IDS_NAME, "count": n}


def write_sq8(directory: Path, vectors: np.ndarray, ids: np.ndarray) -> dict:
    """An ivfpq-sq8 index's 8-bit codes, written by the indexer's own code (`RerankFile.writers`);
    returns index.json's description of them."""
    from priorclip.search import ann

    files, spec = ann.RerankFile.from_arrays(ids, vectors, ann.train_sq8(vectors)).writers()
    with open(directory / ann.SQ8_NAME, "wb") as fh:
        files[ann.SQ8_NAME](fh)
    return spec["sq8"]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run_archive(args, n: int, data: dict, rng, rows: list, work: Path, log=print) -> None:
    import faiss

    from priorclip.search import ann
    from priorclip.search.backends.faiss_backend import FaissBackend
    from priorclip.search.store import FAISS_NAME, Store

    k, directory = args.k, work / f"archive_{n}"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    t = time.perf_counter()
    vectors, real = archive_vectors(data["base"], n, rng, data["target_cos"], work / f"vectors_{n}.npy")
    write_catalogue(directory, vectors, log)
    catalogue_s = time.perf_counter() - t
    log(f"   {n:,} items ({real:,} real) catalogued in {catalogue_s:.0f} s")
    sets = {"image": data["image_q"]} | ({"text": data["text_q"]} if data["text_q"] is not None else {})
    areas = boxes(n, rng)
    truths = {}
    for qname, q in sets.items():
        truths[(qname, None)] = exact(vectors, q, k)
        for area, bxs in areas.items():  # query j searches box j % len(bxs)
            truth = np.zeros((len(q), k), np.int64)
            for b, box in enumerate(bxs):
                js = np.arange(b, len(q), len(bxs))
                truth[js] = exact(vectors, q[js], k, in_box(box, n))
            truths[(qname, area)] = truth
    base = {"n": n, "real": real, "catalogue_s": round(catalogue_s, 1)}

    def record(name, backend, build_s, ram, disk, before=None):
        for qname, q in sets.items():
            for area in (None, *areas) if before is None else (None,):
                with paused(args.pause, log):
                    res = measure(backend, q, truths[(qname, area)], k, None if area is None else areas[area],
                                  args.row_budget, before)
                row = {**base, "backend": name, "queries": qname, "bbox": area or "none", "build_s": round(build_s, 1),
                       "ram_mb": round(ram / 2 ** 20), "disk_mb": round(disk / 2 ** 20), **res}
                rows.append(row)
                log(f"{n:>10,} {name:<24} {qname:<6} {row['bbox']:<7} {row['build_s']:>8.1f} {row['ram_mb']:>7} "
                    f"{row['disk_mb']:>8} {row['p50_ms']:>7.2f} {row['p99_ms']:>8.2f} {row['recall_at_10']:>6.3f}")

    ids = item_ids(n)
    for index_type in args.faiss_types.split(","):
        if index_type == "flat16" and n > args.flat_max:
            continue
        t = time.perf_counter()
        index, params = ann.build(vectors, ids, index_type)
        faiss.write_index(index, str(directory / FAISS_NAME))
        del index
        ram = (directory / FAISS_NAME).stat().st_size  # FAISS reads the whole structure into RAM
        settings = [(None, None, None, None)]
        if index_type in ann.IVFPQ_TYPES:
            params["rerank"] = link_rerank(directory, work / f"vectors_{n}.npy", n)
            candidates, shortlists, sources = args.ivfpq_candidates, [None], args.ivfpq_rerank.split(",")
            if index_type == "ivfpq-sq8":
                params["rerank"]["sq8"] = write_sq8(directory, vectors, ids)
                ram += (directory / ann.SQ8_NAME).stat().st_size  # loaded whole
                candidates, shortlists, sources = args.sq8_candidates, args.sq8_shortlist.split(","), ["file"]
            settings = [(int(p), int(c), source, None if s is None else int(s)) for source in sources
                        for p in args.ivfpq_nprobe.split(",") for c in candidates.split(",") for s in shortlists]
        build_s = time.perf_counter() - t
        shown = {k: v for k, v in params.items() if k != "rerank"}  # not the files, nor 2 x d quantiser ranges
        log(f"   faiss {index_type} built in {build_s:.0f} s ({shown})")
        for nprobe, least, source, shortlist in settings:
            info = {"embed_dim": vectors.shape[1], "faiss": {**params, "file": FAISS_NAME}}
            if nprobe:
                info["faiss"].update(nprobe=nprobe, min_candidates=least)
            if shortlist:
                info["faiss"]["shortlist"] = shortlist
            if source == "sqlite":  # as an index without re-rank file (made before there was one)
                info["faiss"].pop("rerank")
            store = Store(directory, readonly=True)
            backend = FaissBackend(directory, info, store)
            label = f"faiss {index_type}" + (f" nlist={params['nlist']} nprobe={nprobe} re-rank>={least:,}"
                                             + (f" sq8 top k+{shortlist}" if shortlist else "")
                                             + f" from {'file' if source == 'file' else 'items.sqlite'}" if nprobe else "")
            record(label, backend, build_s, ram, dir_bytes(directory))
            if source == "file" and args.ivfpq_cold:
                record(label + ", cold cache", backend, build_s, ram, dir_bytes(directory),
                       evict_rerank(backend, directory / info["faiss"]["rerank"]["file"]))
            store.close()
            del backend
    if n <= args.milvus_max:
        for milvus_index in args.milvus_types.split(","):
            record_milvus(args, n, directory, vectors.shape[1], milvus_index, record, log)
    del vectors
    shutil.rmtree(directory)
    (work / f"vectors_{n}.npy").unlink()


def rss() -> int:
    """Resident bytes of this process (Milvus Lite 3 runs its engine in-process)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def record_milvus(args, n: int, directory: Path, dim: int, index_type: str, record, log) -> None:
    from priorclip.search.backends.milvus_backend import MilvusBackend, milvus_spec
    from priorclip.search.store import Store

    db = directory / f"milvus_{index_type.lower()}.db"
    params = {"nlist": args.milvus_nlist} if index_type.startswith("IVF") else None
    spec = milvus_spec(str(db), directory, f"bench_{index_type.lower()}", index_type, params)
    if index_type.startswith("IVF"):
        spec["index"]["search_params"] = {"nprobe": args.milvus_nprobe}
    store = Store(directory, readonly=True)
    before = rss()
    t = time.perf_counter()
    backend = MilvusBackend.create_or_open(spec, dim, store)
    backend.sync(lambda m: None)
    backend.client.load_collection(spec["collection"])
    build_s = time.perf_counter() - t
    label = f"milvus-lite {index_type}" + (f" nlist={args.milvus_nlist} nprobe={args.milvus_nprobe}"
                                           if index_type.startswith("IVF") else "")
    record(label, backend, build_s, max(rss() - before, 0), dir_bytes(db) if db.is_dir() else db.stat().st_size)
    backend.client.close()
    store.close()
