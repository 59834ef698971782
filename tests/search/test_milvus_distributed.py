"""Distributed indexing into one shared Milvus (a Milvus Lite gRPC server, the protocol of a real
Milvus): two worker processes index their shards side by side with no merge step, one is killed
with SIGKILL mid-run and resumes, and any part directory then serves the whole archive."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the Milvus backend needs pymilvus + milvus-lite (pip install 'priorclip[milvus]')")

from priorclip.search.index import build_index, part_dir  # noqa: E402
from priorclip.search.query import SearchIndex  # noqa: E402

from search_support import INDEX_CHILD, STUB, make_geotiff  # noqa: E402

SEARCH_TESTS = Path(__file__).resolve().parent


@pytest.fixture
def milvus_server(tmp_path):
    """`milvus-lite server` on a free local port: what `--uri http://HOST:19530` reaches in production."""
    exe = Path(sys.executable).with_name("milvus-lite")
    if not exe.exists():
        pytest.skip("milvus-lite's server command is not installed")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([str(exe), "server", "--data-dir", str(tmp_path / "milvus-data"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "milvus-lite server did not start"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def _archive(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    for i in range(24):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((32, 32)).save(folder / f"img{i:02d}.png")
    make_geotiff(folder / "scene.tif", 512, 256)
    return folder


def _vectors(part: Path) -> int:
    if not (part / "items.sqlite").exists():
        return 0
    con = sqlite3.connect(part / "items.sqlite", timeout=5)
    try:
        return con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_two_workers_write_one_collection_survive_kill_9_and_serve_from_any_part(milvus_server, tmp_path,
                                                                                  stub_encoder, capsys):
    from priorclip.cli.main import main
    from pymilvus import MilvusClient

    archive = _archive(tmp_path / "archive")
    parts = tmp_path / "parts"
    common = [str(archive), "--model", STUB, "--out", str(parts), "--tile-size", "128", "--batch-size", "2",
              "--workers", "1", "--no-progress", "--backend", "milvus", "--uri", milvus_server]
    env = {**os.environ, "SEARCH_TESTS": str(SEARCH_TESTS), "SLOW_BATCH_S": "0.3"}
    procs = [subprocess.Popen([sys.executable, "-c", INDEX_CHILD, "index", *common, "--shard", f"{r}/2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) for r in (0, 1)]
    part1 = part_dir(parts, 1, 2)
    try:
        deadline = time.monotonic() + 120
        while _vectors(part1) < 4:  # two batches of worker 1 are in
            assert procs[1].poll() is None, procs[1].stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "worker 1 made no progress"
            time.sleep(0.02)
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        assert procs[0].wait(120) == 0, procs[0].stderr.read().decode()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert procs[1].returncode == -signal.SIGKILL
    # the same command again finishes worker 1's shard (in this process, at full speed)
    assert main(["index", *common, "--shard", "1/2"]) == 0, capsys.readouterr().err

    client = MilvusClient(milvus_server)
    collection = "parts"
    total = sum(SearchIndex(part_dir(parts, r, 2), encoder=stub_encoder).store.counts()["items"] for r in (0, 1))
    assert total == 24 + 8  # 24 photos, 4 x 2 tiles
    assert client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"] == total
    ids = [r["id"] for r in client.query(collection, filter="id >= 0", output_fields=["id"], limit=100)]
    assert len(set(ids)) == total and {i >> 40 for i in ids} == {0, 1}  # each worker wrote its own id range

    # one machine, FAISS flat, same archive: the reference ranking (by file and window)
    ref = SearchIndex(build_index([archive], tmp_path / "ref", stub_encoder, model_spec=STUB, tile_size=128,
                                  index_type="flat", progress=False, log=lambda *_: None) and tmp_path / "ref",
                      encoder=stub_encoder)
    key = lambda h: (h["name"], tuple(h["window"]) if h["kind"] == "tile" else None)  # noqa: E731
    want = [key(h) for h in ref.search_text("fields", k=total)]
    for r in (0, 1):  # either part directory serves everything
        idx = SearchIndex(part_dir(parts, r, 2), encoder=stub_encoder)
        assert len(idx) == total
        hits = idx.search_text("fields", k=total)
        assert [key(h) for h in hits] == want
        other = next(h for h in hits if (h["id"] >> 40) != r)  # an item the other worker indexed
        assert idx.thumbnail(other["id"], 64)[:2] == b"\xff\xd8"
        tile = next(h for h in hits if h["kind"] == "tile")
        assert idx.scene(tile["scene_id"])["tiles"] == 8 and idx.scene_overview(tile["scene_id"])[0][:2] == b"\xff\xd8"
        assert [key(h) for h in idx.search_similar(other["id"], k=5)] == [key(h) for h in ref.search_similar(
            next(x["id"] for x in ref.search_text("fields", k=total) if key(x) == key(other)), k=5)]
    shutil.rmtree(parts)
