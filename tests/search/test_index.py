"""Indexing a folder: search by text and image, incremental re-runs, resume after a kill,
unreadable files, sharding/merging, approximate index recall, and the CLI verbs. The tests that do
not concern FAISS itself run on both vector stores (`backend`: FAISS and Milvus Lite)."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest

from priorclip.cli.main import main
from priorclip.errors import ConfigError, DataError
from priorclip.search import ann
from priorclip.search.encoders import ModelEncoder
from priorclip.search.index import build_index, merge_indexes, parse_shard, rebuild_ann
from priorclip.search.query import SearchIndex

from search_support import DIM, STUB, StubModel, backend_args, backend_spec

pytestmark = pytest.mark.shared


def _build(archive, out, encoder, store="faiss", **kw):
    kw.setdefault("backend", backend_spec(store, out))
    kw.setdefault("batch_size", 8)
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda *_: None)
    return build_index([archive], out, encoder, model_spec=STUB, **kw)


def test_index_folder_then_search_by_text_and_image(archive, tmp_path, stub_encoder, backend):
    out = tmp_path / "idx"
    info = _build(archive, out, stub_encoder, backend)
    n = len(list(archive.rglob("*.jpg")))
    assert info["counts"]["items"] == n and info["counts"]["failed_files"] == 0
    for name in ("index.json", "items.sqlite", "report.json"):
        assert (out / name).is_file()
    on_disk = json.loads((out / "index.json").read_text())
    assert on_disk["model"]["name"] == STUB and on_disk["embed_dim"] == DIM
    assert on_disk["model"]["spec"] == STUB and on_disk["priorclip_version"]
    assert on_disk["roots"] == [str(archive.resolve())] and on_disk["backend"]["kind"] == backend
    assert (out / "vectors.faiss").is_file() == (backend == "faiss")
    assert on_disk["faiss"]["type"] == "flat16" if backend == "faiss" else "faiss" not in on_disk

    idx = SearchIndex(out)  # loads the encoder by the name recorded in index.json
    hits = idx.search_text("many planes parked near the terminal", k=7)
    assert len(hits) == 7 and [h["rank"] for h in hits] == list(range(1, 8))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h["id"] for h in hits}) == 7

    query = sorted(archive.rglob("*.jpg"))[5]
    hits = idx.search_image(query, k=3)
    assert hits[0]["path"] == str(query.resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[1]["score"] < hits[0]["score"]
    # k larger than the archive returns everything once
    assert len(idx.search_text("river", k=1000)) == n


def test_incremental_rerun_embeds_only_new_or_changed(archive, tmp_path, stub_encoder, ucm_dir, backend):
    out = tmp_path / "idx"
    first = _build(archive, out, stub_encoder, backend)
    n = first["counts"]["items"]
    ids_before = {r[0] for r in sqlite3.connect(out / "items.sqlite").execute("SELECT id FROM items")}

    again = _build(archive, out, stub_encoder)
    assert again["last_run"]["embedded"] == 0 and again["last_run"]["files_unchanged"] == n

    new_dir = archive / "c"
    new_dir.mkdir()
    for i in (2, 3, 4):
        shutil.copy(ucm_dir / "images" / f"{i}.jpg", new_dir / f"new{i}.jpg")
    changed = sorted((archive / "b").glob("*.jpg"))[0]
    shutil.copy(ucm_dir / "images" / "1000.jpg", changed)   # new content
    os.utime(changed, ns=(1, 1_000_000_000))
    removed = sorted((archive / "a").glob("*.jpg"))[0]
    removed.unlink()

    third = _build(archive, out, stub_encoder)       # no backend named: the index keeps its own
    assert third["last_run"]["embedded"] == 4            # 3 new + 1 changed
    assert third["last_run"]["files_removed"] == 1
    assert third["counts"]["items"] == n + 3 - 1
    idx = SearchIndex(out, encoder=stub_encoder)
    assert idx.search_image(changed, k=1)[0]["path"] == str(changed.resolve())
    assert idx.search_image(changed, k=1)[0]["score"] == pytest.approx(1.0, abs=1e-4)
    ids_after = {r[0] for r in sqlite3.connect(out / "items.sqlite").execute("SELECT id FROM items")}
    assert len(ids_before & ids_after) == n - 2            # unchanged items keep their ids
    assert str(removed.resolve()) not in {h["path"] for h in idx.search_text("x", k=1000)}


class _Killed(RuntimeError):
    pass


def test_resume_after_kill_does_not_reembed_committed_batches(archive, tmp_path, stub_encoder, backend):
    out = tmp_path / "idx"
    model = StubModel()

    class DiesOnThirdBatch(ModelEncoder):
        def embed_images(self, batch):
            if self.model.calls == 2:
                raise _Killed("simulated kill")
            return super().embed_images(batch)

    with pytest.raises(_Killed):
        _build(archive, out, DiesOnThirdBatch(model), backend, batch_size=4)
    assert not (out / "index.json").exists()               # unfinished runs never look finished
    committed = sqlite3.connect(out / "items.sqlite").execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    assert committed == 8

    with pytest.raises(DataError):
        SearchIndex(out)                                    # not queryable before it finishes
    info = _build(archive, out, stub_encoder, batch_size=4)
    n = len(list(archive.rglob("*.jpg")))
    assert info["last_run"]["embedded"] == n - 8
    assert info["counts"]["items"] == n and info["counts"]["pending_items"] == 0
    # resumed vectors equal those of an uninterrupted build
    fresh = _build(archive, tmp_path / "fresh", stub_encoder, backend)
    a = SearchIndex(out, encoder=stub_encoder).search_text("green trees", k=n)
    b = SearchIndex(tmp_path / "fresh", encoder=stub_encoder).search_text("green trees", k=n)
    assert [h["path"] for h in a] == [h["path"] for h in b]
    assert fresh["counts"]["items"] == n


def test_unreadable_files_are_reported_and_skipped(archive, tmp_path, stub_encoder, ucm_dir, backend):
    (archive / "garbage.jpg").write_bytes(b"this is not an image")
    (archive / "empty.png").write_bytes(b"")
    (archive / "truncated.jpg").write_bytes((ucm_dir / "images" / "7.jpg").read_bytes()[:700])
    (archive / "notes.txt").write_text("not an image extension: ignored, not reported")
    out = tmp_path / "idx"
    info = _build(archive, out, stub_encoder, backend)
    n_good = len(list(archive.rglob("*.jpg"))) - 2
    assert info["counts"]["items"] == n_good
    report = json.loads((out / "report.json").read_text())
    bad = {os.path.basename(r["path"]): r["error"] for r in report["failed"]}
    assert set(bad) == {"garbage.jpg", "empty.png", "truncated.jpg"}
    assert all(msg and not msg.startswith(str(archive)) for msg in bad.values())
    assert bad["empty.png"] == "empty file (0 bytes)"
    assert "truncat" in bad["truncated.jpg"]
    hits = SearchIndex(out, encoder=stub_encoder).search_text("a road", k=100)
    assert len(hits) == n_good and not any(h["name"] in bad for h in hits)
    # unchanged bad files are not retried; --retry-failed tries them again
    again = _build(archive, out, stub_encoder)
    assert again["last_run"]["embedded"] == 0 and again["last_run"]["failed"] == 0
    retried = _build(archive, out, stub_encoder, retry_failed=True)
    assert retried["last_run"]["failed"] == 3


def test_symlink_leaving_the_archive_is_not_indexed(archive, tmp_path, stub_encoder, ucm_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(ucm_dir / "images" / "9.jpg", outside / "secret.jpg")
    (archive / "link.jpg").symlink_to(outside / "secret.jpg")
    out = tmp_path / "idx"
    _build(archive, out, stub_encoder)
    report = json.loads((out / "report.json").read_text())
    assert [os.path.basename(s["path"]) for s in report["skipped"]] == ["link.jpg"]
    paths = {h["path"] for h in SearchIndex(out, encoder=stub_encoder).search_text("x", k=1000)}
    assert not any("secret" in p for p in paths)


def test_changed_settings_need_a_new_directory(archive, tmp_path, stub_encoder):
    out = tmp_path / "idx"
    _build(archive, out, stub_encoder)
    with pytest.raises(ConfigError, match="new --out"):
        _build(archive, out, stub_encoder, tile_size=128)


def test_shards_are_disjoint_and_merge_into_one_index(archive, tmp_path, stub_encoder):
    parts = tmp_path / "parts"
    a = _build(archive, parts, stub_encoder, shard=(0, 2))
    b = _build(archive, parts, stub_encoder, shard=(1, 2))
    n = len(list(archive.rglob("*.jpg")))
    assert a["counts"]["items"] + b["counts"]["items"] == n and min(a["counts"]["items"], b["counts"]["items"]) > 0
    dirs = sorted(parts.iterdir())
    assert [d.name for d in dirs] == ["part-00000-of-00002", "part-00001-of-00002"]
    pa = {h["path"] for h in SearchIndex(dirs[0], encoder=stub_encoder).search_text("x", k=1000)}
    pb = {h["path"] for h in SearchIndex(dirs[1], encoder=stub_encoder).search_text("x", k=1000)}
    assert not pa & pb
    merged = merge_indexes(dirs, tmp_path / "merged", log=lambda *_: None)
    assert merged["counts"]["items"] == n and len(merged["merged_from"]) == 2
    idx = SearchIndex(tmp_path / "merged", encoder=stub_encoder)
    assert {h["path"] for h in idx.search_text("x", k=1000)} == pa | pb
    assert all(h["valid_fraction"] == 1.0 for h in idx.search_text("x", k=1000))   # carried over
    assert merged["tiling"]["min_valid"] == 0.5
    q = sorted(archive.rglob("*.jpg"))[3]
    assert idx.search_image(q, k=1)[0]["path"] == str(q.resolve())
    with pytest.raises(ConfigError, match="already holds"):
        merge_indexes(dirs, tmp_path / "merged", log=lambda *_: None)


def test_parse_shard_flag_and_torchrun_env():
    assert parse_shard("1/4", env={}) == (1, 4)
    assert parse_shard(None, env={"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert parse_shard(None, env={"WORLD_SIZE": "1"}) is None
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad, env={})


@pytest.mark.parametrize("index_type", ["hnsw", "ivf"])
def test_approximate_index_reports_recall(archive, tmp_path, stub_encoder, index_type):
    info = _build(archive, tmp_path / "idx", stub_encoder, index_type=index_type)
    r = info["faiss"]["recall_at_10"]
    assert info["faiss"]["type"] == index_type and 0.0 <= r <= 1.0
    assert r >= 0.9  # tiny archive: HNSW / IVF with enough probes are near exact
    q = sorted(archive.rglob("*.jpg"))[0]
    assert SearchIndex(tmp_path / "idx", encoder=stub_encoder).search_image(q, k=1)[0]["path"] == str(q.resolve())


def test_recall_measure_detects_a_lossy_index():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(100, 4100, dtype=np.int64)
    flat, _ = ann.build(x, ids, "flat")
    assert ann.recall_at_k(flat, x, ids, k=10, n_queries=100) == 1.0
    ivf, params = ann.build(x, ids, "ivf", nlist=64, nprobe=1)
    r = ann.recall_at_k(ivf, x, ids, k=10, n_queries=100)
    assert params["nprobe"] == 1 and r < 0.8   # uniform random data, one probed list: clearly lossy


def test_loaded_ivf_splits_a_single_query_over_its_lists_with_the_same_answer(tmp_path):
    """FAISS's default parallel mode gives one query one core; a loaded IVF index must scan the
    probed lists on every thread and still rank exactly as the default does."""
    import faiss

    rng = np.random.default_rng(3)
    x = rng.normal(size=(6000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(6000, dtype=np.int64)
    index, params = ann.build(x, ids, "ivf", nlist=32, nprobe=8)
    faiss.write_index(index, str(tmp_path / "v.faiss"))
    loaded = ann.load(tmp_path / "v.faiss", params)
    assert faiss.extract_index_ivf(loaded).parallel_mode == ann.IVF_PARALLEL_OVER_LISTS
    faiss.extract_index_ivf(index).parallel_mode = 0
    faiss.extract_index_ivf(index).nprobe = 8
    for q in x[:20]:
        s1, i1 = loaded.search(q[None], 10)
        s0, i0 = index.search(q[None], 10)
        assert np.array_equal(i1, i0) and np.allclose(s1, s0)


def test_cli_index_and_search(archive, tmp_path, stub_encoder, capsys, backend):
    out = tmp_path / "idx"
    rc = main(["index", str(archive), "--model", STUB, "--out", str(out), "--workers", "2",
               "--batch-size", "8", "--no-progress", *backend_args(backend, out)])
    assert rc == 0
    n = len(list(archive.rglob("*.jpg")))
    assert f"index ready: {n} items" in capsys.readouterr().out

    assert main(["search", str(out), "a baseball field", "-k", "4"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "score", "id"] and len(table) == 2 + 4

    query = sorted(archive.rglob("*.jpg"))[2]
    assert main(["search", str(out), "--image", str(query), "-k", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["results"][0]["path"] == str(query.resolve()) and len(data["results"]) == 3

    assert main(["search", str(out), "beach", "-k", "2", "--geojson"]) == 0
    fc = json.loads(capsys.readouterr().out)
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    assert all(f["geometry"] is None for f in fc["features"])   # plain JPEGs have no footprint

    # user errors: one line on stderr, exit 2, no traceback
    assert main(["search", str(out), "beach", "--image", str(query)]) == 2
    assert main(["search", str(tmp_path / "nope"), "beach"]) == 2
    assert main(["index", str(archive), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 3


def test_cli_index_exit_status_names_skipped_files(archive, tmp_path, stub_encoder, capsys):
    """Issue #16.5: 0 = clean, 1 = done but files skipped (named on the console), not both 0."""
    out = tmp_path / "idx"
    argv = ["index", str(archive), "--model", STUB, "--out", str(out), "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "0 input(s) skipped" in captured.out and "skipped" not in captured.err

    (archive / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "1 input(s) skipped" in captured.out
    lines = captured.err.splitlines()
    assert lines[0] == "priorclip index: 1 input(s) skipped:"
    assert lines[1].startswith(f"  {(archive / 'a' / 'broken.jpg').resolve()}: ") and len(lines[1]) > 40
    assert lines[2] == f"  (see {out / 'report.json'})"
    assert main(argv) == 1  # unchanged and still not in the index: still reported
    assert "broken.jpg" in capsys.readouterr().err

    for i in range(6):
        (archive / "b" / f"empty{i}.png").write_bytes(b"")
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "priorclip index: 7 input(s) skipped:" and len(err) == 1 + 5 + 1
    assert err[-1] == f"  ... and 2 more, see {out / 'report.json'}"
    assert "empty file (0 bytes)" in "\n".join(err)


def test_cli_index_missing_path_fails_before_writing(archive, tmp_path, stub_encoder, capsys):
    """Issue #16.5: a typo in PATH is exit 2 and leaves no output folder (no items.sqlite, no lock)."""
    for paths in ([tmp_path / "nowhere"], [archive, tmp_path / "nowhere"]):
        out = tmp_path / "idx"
        rc = main(["index", *map(str, paths), "--model", STUB, "--out", str(out), "--no-progress"])
        assert rc == 2 and not out.exists()
        err = capsys.readouterr().err
        assert err.startswith("priorclip index: error: ") and f"index path {tmp_path / 'nowhere'} does not exist" in err
    with pytest.raises(DataError, match="does not exist"):  # the library refuses as early
        _build(tmp_path / "nowhere", tmp_path / "lib-idx", stub_encoder)
    assert not (tmp_path / "lib-idx").exists()


def test_flat16_scan_split_over_threads_equals_one_scan_and_float32():
    """The default index: float16 codes scanned in per-thread slices give the same hits as one
    scan of the same codes, ids mapped back, and near-exact recall against float32."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(7, 5007, dtype=np.int64)[::-1].copy()  # ids unrelated to positions
    index, params = ann.build(x, ids, "flat16")
    assert params["type"] == "flat16" and index.ntotal == 5000
    split = ann.ParallelScan(index, 3)
    q = x[rng.choice(5000, 50, replace=False)] + 0.01 * rng.normal(size=(50, 64)).astype(np.float32)
    s1, i1 = index.search(q, 10)
    s2, i2 = split.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)
    assert split.ntotal == 5000 and set(i2.ravel()) <= set(ids.tolist())
    truth = ann.exact_topk(q, x, ids, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth.tolist(), i2.tolist())]) >= 0.98
    top = x[5006 - i2[:, 0]]  # id -> row (ids were stored in reverse order)
    assert np.abs(s2[:, 0] - np.einsum("qd,qd->q", q, top)).max() < 2e-3  # float16 rounding only
    # what a loaded index uses: split only when large enough to pay
    big, big_params = ann.build(np.repeat(x, 7, axis=0)[:ann.PARALLEL_SCAN_MIN], np.arange(ann.PARALLEL_SCAN_MIN), "flat16")
    assert isinstance(ann.for_search(big, big_params, threads=2), ann.ParallelScan)
    assert not isinstance(ann.for_search(big, big_params, threads=1), ann.ParallelScan)
    assert not isinstance(ann.for_search(index, params, threads=2), ann.ParallelScan)


def test_rebuild_ann_switches_type_without_reembedding(archive, tmp_path, stub_encoder):
    out = tmp_path / "idx"
    _build(archive, out, stub_encoder)
    q = sorted(archive.rglob("*.jpg"))[3]
    before = [h["id"] for h in SearchIndex(out, encoder=stub_encoder).search_image(q, k=5)]
    info = rebuild_ann(out, "flat", log=lambda *_: None)
    assert info["faiss"]["type"] == "flat" and json.loads((out / "index.json").read_text())["faiss"]["type"] == "flat"
    idx = SearchIndex(out, encoder=stub_encoder)
    assert [h["id"] for h in idx.search_image(q, k=5)] == before
    assert idx.search_image(q, k=1)[0]["score"] == pytest.approx(1.0, abs=1e-6)  # float32: exact self-match


class _VectorsOnDisk:
    """The part of a Store an `ivfpq` search reads: float32 vectors by id."""

    def __init__(self, ids, x):
        self.row = {int(i): r for r, i in enumerate(ids)}
        self.x = x

    def vectors_of(self, ids, dim):
        ids = [i for i in ids if i in self.row]
        return np.array(ids, dtype=np.int64), self.x[[self.row[i] for i in ids]]


def test_ivfpq_keeps_codes_in_ram_and_reranks_exactly_from_disk(tmp_path):
    from priorclip.search.backends.faiss_backend import FaissBackend
    from priorclip.search.store import write_faiss

    rng = np.random.default_rng(0)  # 40 clusters of 500: neighbours exist, as in real embeddings
    centres = rng.normal(size=(40, 64))
    x = (np.repeat(centres, 500, axis=0) + 0.35 * rng.normal(size=(20_000, 64))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(7, 20_007, dtype=np.int64)
    index, params = ann.build(x, ids, "ivfpq")
    assert params["pq_bytes"] == 8 and params["refine"] == ann.IVFPQ_REFINE
    with open(tmp_path / "vectors.faiss", "wb") as fh:
        write_faiss(index, fh)
    assert (tmp_path / "vectors.faiss").stat().st_size < x.nbytes / 4  # codes, not vectors
    raw = ann.recall_at_k(index, x, ids, k=10, n_queries=200)  # the compressed ranking alone
    refined = ann.recall_at_k(index, x, ids, k=10, n_queries=200, params=params)
    assert refined >= 0.95 and refined > raw + 0.1, (raw, refined)

    backend = FaissBackend(tmp_path, {"embed_dim": 64, "faiss": {**params, "file": "vectors.faiss"}},
                           _VectorsOnDisk(ids, x))
    q = x[123]
    hits = backend.search(q, 10)
    truth = ann.exact_topk(q[None], x, ids, 10)[0]
    assert hits[0] == (130, pytest.approx(1.0, abs=1e-5))  # itself, with its exact score
    assert len({i for i, _ in hits} & set(truth.tolist())) >= 9
    assert [s for _, s in hits] == pytest.approx(sorted((float(x[i - 7] @ q) for i, _ in hits), reverse=True))
    with pytest.raises(ConfigError, match="at least 10,000"):
        ann.build(x[:500], ids[:500], "ivfpq")

    # the re-rank file: the same hits and scores without touching items.sqlite
    shuffled = rng.permutation(len(ids))  # written in id order whatever order the vectors come in
    files, spec = ann.RerankFile.from_arrays(ids[shuffled], x[shuffled]).writers()
    for name, write in files.items():
        with open(tmp_path / name, "wb") as fh:
            write(fh)
    assert spec == {"file": "vectors.rerank.npy", "ids": "vectors.rerank-ids.npy", "count": 20_000}
    np.testing.assert_array_equal(np.load(tmp_path / "vectors.rerank-ids.npy"), ids)

    class _Unused:
        def vectors_of(self, ids, dim):
            raise AssertionError(f"read {len(ids)} vectors from items.sqlite")

    info = {"embed_dim": 64, "faiss": {**params, "file": "vectors.faiss", "rerank": spec}}
    from_file = FaissBackend(tmp_path, info, _Unused())
    assert from_file.rerank is not None and from_file.search(q, 10) == hits
    # ids the file lacks (an item stored after it was written) come from items.sqlite
    part = ann.RerankFile(np.load(tmp_path / "vectors.rerank.npy")[:15_000], ids[:15_000])
    found, vecs, missing = part.vectors_of([20_006, 7, 15_006, 15_007, 99_999])
    assert found.tolist() == [7, 15_006] and missing.tolist() == [15_007, 20_006, 99_999]  # in id order
    np.testing.assert_array_equal(vecs, x[[0, 14_999]])
    backend.rerank = part
    assert backend.search(x[19_000], 10) == FaissBackend(tmp_path, info, _Unused()).search(x[19_000], 10)
    # a hand-edited re-rank depth is checked when the index is opened
    for key in ("min_candidates", "shortlist"):
        for bad in ("1000", 0, 2.5, True):
            with pytest.raises(DataError, match=f"faiss.{key} must be a whole number"):
                FaissBackend(tmp_path, {**info, "faiss": {**info["faiss"], key: bad}}, _Unused())
    assert FaissBackend(tmp_path, {**info, "faiss": {**info["faiss"], "min_candidates": 50}}, _Unused()).search(q, 10)[0] == hits[0]
    # files that are not the ones index.json names are ignored: items.sqlite serves
    assert ann.RerankFile.open(tmp_path, {**spec, "count": 19_999}) is None
    assert ann.RerankFile.open(tmp_path, {**spec, "file": "gone.npy"}) is None
    assert ann.RerankFile.open(tmp_path, None) is None


def test_sq8_codes_pick_the_rows_read_from_disk(tmp_path):
    """`ivfpq-sq8`: of the candidates, only the `keep` whose FAISS 8-bit codes score best are read
    (ids the file lacks still pass to items.sqlite); the codes survive writing and opening."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(100, 4100)
    sq = ann.train_sq8(x)
    files, spec = ann.RerankFile.from_arrays(ids, x, sq).writers()
    for name, write in files.items():
        with open(tmp_path / name, "wb") as fh:
            write(fh)
    assert set(spec["sq8"]) == {"file", "trained"} and len(spec["sq8"]["trained"]) == 2 * 32
    rerank = ann.RerankFile.open(tmp_path, spec)
    np.testing.assert_array_equal(rerank.codes, sq.compute_codes(x))
    q, cand = x[7], np.append(rng.choice(ids, 500, replace=False), 99_999)
    found, vecs, missing = rerank.vectors_of(cand, q, 20)
    approx = sq.decode(sq.compute_codes(x[cand[:-1] - 100])) @ q
    assert set(found.tolist()) == set(cand[:-1][np.argsort(-approx)[:20]].tolist()) and missing.tolist() == [99_999]
    np.testing.assert_array_equal(vecs, x[found - 100])
    assert len(rerank.vectors_of(cand, q, 600)[0]) == 500  # keep >= candidates: all of them
    assert len(rerank.vectors_of(cand)[0]) == 500  # no query: no 8-bit ranking
    # the same build ranks through the codes when its recall is measured
    index, params = ann.build(np.repeat(x, 3, 0) + 0.01 * rng.standard_normal((12_000, 32)).astype(np.float32),
                              np.arange(12_000), "ivfpq-sq8")
    assert params["shortlist"] == ann.IVFPQ_SQ8_SHORTLIST and params["min_candidates"] == ann.IVFPQ_SQ8_MIN_CANDIDATES
    assert ann.shortlist_count(params, 10) == 110 and ann.shortlist_count({"type": "ivfpq"}, 10) is None


def test_rerank_rows_by_table_or_binary_search_agree():
    """Ids are looked up in a direct id -> row table while they are dense enough (consecutive, or
    with removed items' gaps), by binary search when sparse; both find every held id, in id order,
    and report the others as missing."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3000, 8)).astype(np.float32)
    for ids, table in ((np.arange(5, 3005), True),                                    # consecutive
                       (np.sort(rng.choice(4000, 3000, replace=False)) + 1, True),   # removed items
                       (np.arange(3000) * 97 + 11, False)):                          # sparse
        rerank = ann.RerankFile(x, ids)
        assert (rerank._row_of is not None) == table
        ask = np.concatenate([rng.choice(ids, 200, replace=False), [0, ids[-1] + 1, ids[0] - 1, 10 ** 12]])
        found, vecs, missing = rerank.vectors_of(rng.permutation(ask))
        held = np.sort(ask[np.isin(ask, ids)])
        np.testing.assert_array_equal(found, held)
        np.testing.assert_array_equal(vecs, x[np.searchsorted(ids, held)])
        assert set(missing.tolist()) == set(ask.tolist()) - set(ids.tolist())


def test_rerank_file_asks_for_every_candidate_page_before_reading(tmp_path):
    """Cold rows are requested together (madvise WILLNEED) so the disk serves them in parallel:
    each read row's bytes lie inside an advised range, also for a view that starts mid-file."""
    import mmap

    x = np.random.default_rng(5).standard_normal((3000, 48)).astype(np.float32)  # 192-byte rows cross pages
    files, spec = ann.RerankFile.from_arrays(np.arange(3000), x).writers()
    for name, write in files.items():
        with open(tmp_path / name, "wb") as fh:
            write(fh)
    whole = np.load(tmp_path / "vectors.rerank.npy", mmap_mode="r")
    rerank = ann.RerankFile(whole[500:], np.arange(500, 3000))
    advised = []

    class Recorder:
        def madvise(self, option, start, length):
            assert option == mmap.MADV_WILLNEED and start % mmap.PAGESIZE == 0
            advised.append((start, start + length))

    rerank._map = Recorder()
    want = [2999, 500, 1234, 7]
    found, vecs, missing = rerank.vectors_of(want)
    assert found.tolist() == [500, 1234, 2999] and missing.tolist() == [7]
    np.testing.assert_array_equal(vecs, x[[500, 1234, 2999]])
    for row in found.tolist():
        begin = whole.offset + row * 192
        assert any(a <= begin and begin + 192 <= b for a, b in advised), row
    assert len(advised) == 3


def test_publishing_another_index_type_removes_the_rerank_files(tmp_path):
    from priorclip.search.index import _publish

    for name in ("vectors.rerank.npy", "vectors.rerank-ids.npy"):
        (tmp_path / name).write_bytes(b"old")
    _publish(tmp_path, {"vectors.rerank.npy": b"new"}, None, {"faiss": {"type": "ivfpq"}})
    assert (tmp_path / "vectors.rerank.npy").read_bytes() == b"new"
    assert not (tmp_path / "vectors.rerank-ids.npy").exists()
    _publish(tmp_path, {"vectors.faiss": b"flat"}, None, {"faiss": {"type": "flat16"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "vectors.faiss"]


def test_a_killed_publish_leaves_no_temporary_of_any_index_file(tmp_path):
    """The 8-bit codes of ivfpq-sq8 (2.4 GB at 10 M) are cleaned up like the FAISS file's."""
    from priorclip.search.store import remove_stale_temporaries

    names = ["vectors.faiss", "vectors.rerank.npy", "vectors.rerank-ids.npy", "vectors.sq8.npy", "index.json"]
    for name in names:
        (tmp_path / f".{name}.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".other.abc.tmp").write_bytes(b"not ours")
    assert len(remove_stale_temporaries(tmp_path)) == len(names)
    assert [p.name for p in tmp_path.iterdir()] == [".other.abc.tmp"]


def test_exact_topk_streams_chunks_and_row_subsets():
    """The chunked brute force equals one exact FAISS scan, for every chunk size (smaller than k,
    between k and the data, larger), over all rows or a subset, with ids unrelated to rows."""
    import faiss

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    ids = rng.permutation(10_000)[:3000].astype(np.int64)
    q = rng.normal(size=(20, 32)).astype(np.float32)
    flat = faiss.IndexFlatIP(32)
    flat.add(x)
    _, pos = flat.search(q, 10)
    rows = np.sort(rng.choice(3000, 700, replace=False))
    sub = faiss.IndexFlatIP(32)
    sub.add(x[rows])
    _, sub_pos = sub.search(q, 10)
    for chunk in (7, 256, 5000):
        np.testing.assert_array_equal(ann.exact_topk(q, x, ids, 10, chunk=chunk), ids[pos])
        np.testing.assert_array_equal(ann.exact_topk(q, x, ids, 10, rows, chunk=chunk), ids[rows[sub_pos]])
    # fewer rows than k: the rest is -1, as FAISS pads
    short = ann.exact_topk(q, x, ids, 10, rows[:4])
    assert (short[:, 4:] == -1).all() and set(short[0, :4]) == set(ids[rows[:4]])
