"""benchmarks/search_archive.py (the archive table of search_speed.py) on a small archive: its
ground truth agrees with the index's own bbox filter, and both FAISS backends' bbox rankings
(exact scoring and the filtered ranking, over flat16 and a refined ivfpq) match it."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from scripts import load_script


@pytest.fixture(scope="module")
def sa():
    return load_script("benchmarks/search_archive.py", "priorclip_search_archive")


@pytest.mark.slow
def test_archive_truth_and_both_bbox_paths(sa, tmp_path, monkeypatch):
    from priorclip.search import ann
    from priorclip.search.backends import faiss_backend
    from priorclip.search.store import FAISS_NAME, Store

    rng = np.random.default_rng(0)
    n, dim = 12_000, 32
    # clustered, as an archive's embeddings are (uniform random vectors defeat any IVF index)
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    x = centres[rng.integers(0, 64, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sa.write_catalogue(tmp_path, x, log=lambda *_: None)
    store = Store(tmp_path, readonly=True)
    areas = sa.boxes(n, rng, count=3)
    for box in areas["city"] + areas["region"]:  # the benchmark's truth = the index's own filter
        assert store.ids_in_bbox(box) == (sa.in_box(box, n) + 1).tolist()
    q = x[:3] + 0.1 * rng.standard_normal((3, dim)).astype(np.float32)
    for index_type in ("flat16", "ivfpq"):
        index, params = ann.build(x, np.arange(1, n + 1), index_type)
        faiss.write_index(index, str(tmp_path / FAISS_NAME))
        backend = faiss_backend.FaissBackend(tmp_path, {"embed_dim": dim, "faiss": {**params, "file": FAISS_NAME}},
                                             store)
        for limit in (10 ** 9, 0):  # exact scoring of the area, then the filtered ranking
            monkeypatch.setattr(faiss_backend, "EXACT_FILTER_LIMIT", limit)
            for box in areas["region"]:
                truth = sa.exact(x, q, 10, sa.in_box(box, n))
                got = [[i for i, _ in backend.search(v, 10, bbox=box)] for v in q]
                hits = np.mean([len(set(g) & set(t.tolist())) / 10 for g, t in zip(got, truth)])
                # exact but for the one approximate case: ivfpq's candidates, deep in the ranking
                assert hits >= (0.95 if index_type == "ivfpq" and not limit else 1.0), (index_type, limit, hits)
    store.close()


def test_derived_vectors_sit_at_the_asked_cosine(sa, tmp_path):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((500, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    vectors, real = sa.archive_vectors(base, 2_000, rng, 0.9, tmp_path / "v.npy")
    assert real == 500 and np.allclose(vectors[:500], base)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    best = (vectors[500:] @ base.T).max(1)  # each derived vector's cosine to its source
    assert np.allclose(best, 0.9, atol=1e-3)


def test_archive_rows_cover_every_ivfpq_setting(sa, tmp_path):
    """One build, one row per (re-rank source, nprobe, least candidates), query set and area, plus
    cold-cache rows; the deeper re-ranking never loses recall, the re-rank file and items.sqlite
    give the same answers, and the working directory is cleaned up."""
    from argparse import Namespace

    rng = np.random.default_rng(2)
    centres = rng.standard_normal((32, 32)).astype(np.float32)
    x = centres[rng.integers(0, 32, 12_200)] + 0.3 * rng.standard_normal((12_200, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    data = {"base": x[:12_000], "image_q": x[12_000:12_030], "text_q": x[12_030:12_060] * -1, "target_cos": 0.95}
    args = Namespace(k=10, faiss_types="flat16,ivfpq,ivfpq-sq8", flat_max=10 ** 9, ivfpq_nprobe="4",
                     ivfpq_candidates="20,1000", ivfpq_rerank="file,sqlite", ivfpq_cold=True,
                     sq8_candidates="1000", sq8_shortlist="2,200", milvus_max=0, row_budget=60.0, pause=[])
    rows = []
    sa.run_archive(args, 15_000, data, rng, rows, tmp_path, log=lambda *_: None)
    pq = "faiss ivfpq nlist=384 nprobe=4 re-rank>="
    want = {"faiss flat16"} | {f"{pq}{c} from {s}" for c in ("20", "1,000") for s in ("file", "items.sqlite")} | \
        {f"{pq}{c} from file, cold cache" for c in ("20", "1,000")}
    sq8 = "faiss ivfpq-sq8 nlist=384 nprobe=4 re-rank>=1,000 sq8 top k+"
    want |= {f"{sq8}{s} from file{cold}" for s in ("2", "200") for cold in ("", ", cold cache")}
    assert {r["backend"] for r in rows} == want
    assert len(rows) == 7 * 2 * 3 + 4 * 2 and all(r["n"] == 15_000 and r["real"] == 12_000 for r in rows)
    ram = {r["backend"]: r["ram_mb"] for r in rows}
    assert ram[f"{sq8}200 from file"] > ram[f"{pq}20 from file"]  # + the 8-bit copies: 32 bytes a vector
    assert {r["bbox"] for r in rows if r["backend"].endswith("cold cache")} == {"none"}
    recall = {(r["backend"], r["queries"], r["bbox"]): r["recall_at_10"] for r in rows}
    for q in ("image", "text"):
        assert recall[(f"{pq}1,000 from file", q, "none")] >= recall[(f"{pq}20 from file", q, "none")]
        for c in ("20", "1,000"):
            for area in ("none", "city", "region"):
                assert recall[(f"{pq}{c} from file", q, area)] == recall[(f"{pq}{c} from items.sqlite", q, area)]
            assert recall[(f"{pq}{c} from file, cold cache", q, "none")] == recall[(f"{pq}{c} from file", q, "none")]
        # the 8-bit ranking keeps the true neighbours within a margin: a wider one loses nothing
        assert recall[(f"{sq8}200 from file", q, "none")] >= recall[(f"{sq8}2 from file", q, "none")]
        assert recall[(f"{sq8}200 from file", q, "none")] >= recall[(f"{pq}1,000 from file", q, "none")] - 0.05
    assert list(tmp_path.iterdir()) == []


def test_linked_rerank_file_is_what_the_indexer_publishes(sa, tmp_path):
    """The indexer's own finish + publish of an ivfpq index writes the re-rank files the benchmark
    hard-links (byte for byte), searches read them, and a switch back to flat16 removes them."""
    from priorclip.search import ann
    from priorclip.search.backends.faiss_backend import FaissBackend
    from priorclip.search.index import _finish, _publish
    from priorclip.search.store import Store

    rng = np.random.default_rng(4)
    base = rng.standard_normal((2_000, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    vectors, _ = sa.archive_vectors(base, 12_000, rng, 0.9, tmp_path / "v.npy")
    out = tmp_path / "idx"
    sa.write_catalogue(out, vectors, log=lambda *_: None)
    store = Store(out)
    settings = {"tile_size": 256, "tile_stride": 256}
    info, files = _finish(store, out, {"embed_dim": 16}, settings, "ivfpq", "now", lambda *_: None)
    _publish(out, files, None, info)
    assert info["faiss"]["rerank"] == {"file": "vectors.rerank.npy", "ids": "vectors.rerank-ids.npy", "count": 12_000}
    (tmp_path / "linked").mkdir()
    assert sa.link_rerank(tmp_path / "linked", tmp_path / "v.npy", 12_000) == info["faiss"]["rerank"]
    for name in ("vectors.rerank.npy", "vectors.rerank-ids.npy"):
        assert (out / name).read_bytes() == (tmp_path / "linked" / name).read_bytes()
    backend = FaissBackend(out, info, store)
    assert backend.rerank is not None
    hits = backend.search(vectors[5], 10)
    assert hits[0][0] == 6 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    # ivfpq-sq8: the same files + the 8-bit copies, loaded into RAM and used to pick the rows read
    info, files = _finish(store, out, {"embed_dim": 16}, settings, "ivfpq-sq8", "now", lambda *_: None)
    _publish(out, files, None, info)
    assert info["faiss"]["rerank"]["sq8"]["file"] == "vectors.sq8.npy" and info["faiss"]["shortlist"] == 100
    assert info["faiss"]["recall_at_10"] >= 0.95
    backend = FaissBackend(out, info, store)
    assert backend.rerank.codes.shape == (12_000, 16) and not isinstance(backend.rerank.codes, np.memmap)
    hits = backend.search(vectors[5], 10)
    assert hits[0][0] == 6 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    # a damaged codes file is reported, and items.sqlite serves the same answers
    said = []
    np.save(out / "vectors.sq8.npy", np.zeros((5, 16), np.uint8))
    damaged = ann.RerankFile.open(out, info["faiss"]["rerank"], log=said.append)
    assert damaged is not None and damaged.codes is None  # the float32 file still serves
    assert "vectors.sq8.npy" in said[0] and "8-bit codes of shape (5, 16)" in said[0] and "rebuild" in said[0]
    assert FaissBackend(out, info, store).search(vectors[5], 10) == hits
    (out / "vectors.rerank-ids.npy").write_bytes(b"not numpy")
    assert ann.RerankFile.open(out, info["faiss"]["rerank"], log=said.append) is None
    assert "vectors.rerank.npy" in said[1] and "items.sqlite" in said[1]
    assert FaissBackend(out, info, store).search(vectors[5], 10)[0][0] == 6
    info, files = _finish(store, out, {"embed_dim": 16}, settings, "flat16", "now", lambda *_: None)
    _publish(out, files, None, info)
    assert not any((out / name).exists() for name in ("vectors.rerank.npy", "vectors.rerank-ids.npy", "vectors.sq8.npy"))
    assert [i for i, _ in FaissBackend(out, info, store).search(vectors[5], 10)][0] == 6
    store.close()


@pytest.mark.slow
def test_ivfpq_depth_reports_how_deep_the_true_neighbours_lie(tmp_path):
    """benchmarks/ivfpq_depth.py on a small archive of embed_views.py's layout: the share of the
    exact top 10 found can only grow with the PQ depth and with the 8-bit shortlist's margin."""
    depth = load_script("benchmarks/ivfpq_depth.py", "priorclip_ivfpq_depth")
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((64, 32)).astype(np.float32)
    images = centres[rng.integers(0, 64, 6_000)] + 0.5 * rng.standard_normal((6_000, 32)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    image_of = np.arange(6_000) % 300
    np.savez(tmp_path / "views.npz", images=images, image_of=image_of,
             image_split=np.array(["train"] * 200 + ["test"] * 100), texts=images[:500] * -1,
             text_image=np.arange(500) % 300, model='{"checkpoint": "synthetic"}')
    out = tmp_path / "depth.json"
    assert depth.main(["--vectors", str(tmp_path / "views.npz"), "--size", "10000", "--work", str(tmp_path / "w"),
                       "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["size"] == 10_000 and res["index"]["type"] == "ivfpq" and len(res["pq_depth"]) == 6
    for row in res["pq_depth"]:
        shares = [row[f"in_top_{d}"] for d in depth.DEPTHS]
        assert shares == sorted(shares) and 0 < shares[-1] <= 1
    sq8 = [r for r in res["sq_rerank"] if r["codes"] == "QT_8bit"]
    assert len(sq8) == 2 * 3
    for row in sq8:
        found = [row["recall_at_10"]] + [row[f"in_top_k+{m}"] for m in depth.SHORTLISTS]
        assert found == sorted(found), row


def _state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


def test_paused_stops_a_job_while_timing_and_resumes_it_even_on_error(sa):
    import os
    import subprocess
    import time

    job = subprocess.Popen(["sleep", "60"], start_new_session=True)  # its own process group, as a queue's
    said = []
    try:
        with pytest.raises(RuntimeError), sa.paused([job.pid, 2 ** 22 + 7], log=said.append):
            assert _state(job.pid) == "T"
            raise RuntimeError("a timed row failed")
        for _ in range(50):  # SIGCONT is delivered asynchronously
            if _state(job.pid) != "T":
                break
            time.sleep(0.02)
        assert _state(job.pid) in "SR"
        assert len(said) == 1 and str(2 ** 22 + 7) in said[0] and "no such process group" in said[0]
    finally:
        os.killpg(job.pid, 9)
        job.wait()


def test_a_tagged_archive_run_is_saved_beside_the_main_table(tmp_path, monkeypatch):
    """`--archive-tag` writes its own JSON and RESULTS.md section; the main table stays."""
    import argparse

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import results_md

    ss = load_script("benchmarks/search_speed.py", "priorclip_search_speed")
    written = {}
    monkeypatch.setattr(results_md, "write_json", lambda path, obj: written.setdefault(str(path), obj))
    md = tmp_path / "RESULTS.md"
    md.write_text(f"{ss.ARCHIVE_SECTION}\n\nthe main table\n")
    archive = {"machine": "x", "faiss": "1", "threads": 2, "loadavg": [0.0], "date": "d", "sizes": "10",
               "sizes_done": [10], "source": "s", "target_cos": 0.9, "queries": 2, "rows": []}
    args = argparse.Namespace(markdown=True, results=str(md), archive_tag="probe-parallel")
    ss.save_archive(args, {"archive": archive})
    assert [Path(p).name for p in written] == ["results_search_archive_probe-parallel.json"]
    text = md.read_text()
    assert "the main table" in text and f"{ss.ARCHIVE_SECTION}: probe-parallel" in text
    with pytest.raises(SystemExit):
        ss.main(["--archive-tag", "../x"])
