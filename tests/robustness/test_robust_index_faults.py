"""Injected faults while `priorclip index` updates an index: kill -9 in the middle of embedding,
and a disk that fills up while SQLite commits or while the FAISS file, report.json and index.json
are written (injected at the write/fsync/SQLite layer, and for real on a small tmpfs).

In every case the index that was there before stays loadable and answers queries, and running
the same command again finishes the job without embedding finished batches twice.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from robustness_support import assert_one_line_error

from priorclip.search import store as store_mod
from priorclip.search.encoders import ModelEncoder, register_encoder, unregister_encoder
from priorclip.search.index import _locked, build_index
from priorclip.search.query import SearchIndex

SEARCH_TESTS = Path(__file__).resolve().parents[1] / "search"
sys.path.insert(0, str(SEARCH_TESTS))
from search_support import INDEX_CHILD, STUB, StubModel  # the search tests' stand-in encoder

OLD, NEW = 12, 44  # images before and after the archive grows
PUBLISHED = ("vectors.faiss", "report.json", "index.json")


@pytest.fixture
def stub_encoder():
    """The stand-in, also resolvable by name as the CLI and a loaded index look it up."""
    register_encoder(STUB, lambda: ModelEncoder(StubModel()))
    yield ModelEncoder(StubModel())
    unregister_encoder(STUB)


def _images(folder: Path, start: int, stop: int, side: int = 32) -> None:
    """Distinct deterministic images (a smooth colour field plus noise, seeded by the index)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        big = np.kron(base, np.ones((side // 4, side // 4, 1), np.float32))
        arr = np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:04d}.png")


def _build(folder, out, encoder, **kw):
    return build_index([folder], out, encoder, model_spec=STUB, batch_size=4, progress=False,
                       log=lambda *_: None, **kw)


def _db(out: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{out / 'items.sqlite'}?mode=ro", uri=True)


def _snapshot(out: Path) -> dict:
    """ids, paths, states and float32 vectors of an index, in id order."""
    con = _db(out)
    try:
        rows = con.execute("SELECT items.id, files.path, items.state, vectors.vec FROM items JOIN files "
                           "USING(file_id) LEFT JOIN vectors USING(id) ORDER BY items.id").fetchall()
    finally:
        con.close()
    return {"ids": [r[0] for r in rows], "paths": [r[1] for r in rows], "states": [r[2] for r in rows],
            "vectors": [None if r[3] is None else np.frombuffer(r[3], np.float32) for r in rows]}


def _files(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in PUBLISHED}


def _assert_old_index_answers(out: Path, encoder, folder: Path) -> None:
    """The index of the first OLD images loads and answers text and image queries from them only."""
    idx = SearchIndex(out, encoder=encoder)
    assert len(idx) == OLD
    old = {str((folder / f"{i:04d}.png").resolve()) for i in range(OLD)}
    hits = idx.search_text("green fields near a river", k=NEW)
    assert len(hits) == OLD and {h["path"] for h in hits} == old
    probe = folder / "0005.png"
    hit = idx.search_image(probe, k=2)[0]
    assert hit["path"] == str(probe.resolve()) and hit["score"] == pytest.approx(1.0, abs=1e-3)


def _no_temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------
# kill -9
# ---------------------------------------------------------------------------------------------

def test_kill_9_mid_reindex_keeps_the_old_index_and_a_rerun_resumes(tmp_path, stub_encoder, cli):
    folder, out, ref = tmp_path / "archive", tmp_path / "idx", tmp_path / "reference"
    encoder = stub_encoder
    _images(folder, 0, OLD)
    _build(folder, out, encoder)
    _build(folder, ref, encoder)
    before = _files(out)
    _images(folder, OLD, NEW)
    _build(folder, ref, encoder)  # the same history, never interrupted

    argv = ["index", str(folder), "--model", STUB, "--out", str(out), "--batch-size", "2", "--workers", "1",
            "--no-progress"]
    env = {**os.environ, "SEARCH_TESTS": str(SEARCH_TESTS), "SLOW_BATCH_S": "0.15"}
    proc = subprocess.Popen([sys.executable, "-c", INDEX_CHILD, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    committed = 0
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            con = _db(out)
            try:
                committed = con.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            finally:
                con.close()
            if committed >= OLD + 6:  # three of the sixteen new batches are in
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # its orphaned DataLoader worker lives on for a few seconds; the directory is free already
        os.killpg(proc.pid, 0)
        with _locked(out):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:  # the DataLoader worker it forked, if still there
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL

    state = _snapshot(out)
    pending = state["states"].count(0)
    assert len(state["ids"]) == NEW and 0 < pending < NEW - OLD - 4  # really killed mid-embedding
    assert _files(out) == before  # nothing of the new run was published ...
    _assert_old_index_answers(out, encoder, folder)  # ... and the old index still answers

    code, stdout, err = cli(*argv)  # the same command again (in this process, at full speed)
    assert code == 0, err
    assert f"{NEW} files: {NEW} unchanged, 0 new or changed, 0 unreadable, 0 removed; {pending} items to embed" \
        in stdout, stdout
    info = json.loads((out / "index.json").read_text())
    assert info["last_run"]["embedded"] == pending  # finished batches were not embedded again
    assert info["counts"]["items"] == NEW and info["counts"]["pending_items"] == 0

    got, want = _snapshot(out), _snapshot(ref)
    assert got["ids"] == want["ids"] and got["paths"] == want["paths"] and set(got["states"]) == {1}
    np.testing.assert_allclose(np.stack(got["vectors"]), np.stack(want["vectors"]), rtol=0, atol=1e-6)
    for text in ("a parking lot", "dense forest"):
        a = SearchIndex(out, encoder=encoder).search_text(text, k=10)
        b = SearchIndex(ref, encoder=encoder).search_text(text, k=10)
        assert [h["id"] for h in a] == [h["id"] for h in b]
        assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-5)
    assert _no_temporaries(out) == []
    print(f"kill -9 with {NEW - OLD - pending} of {NEW - OLD} new items committed; the rerun embedded {pending}")


# ---------------------------------------------------------------------------------------------
# disk full, injected at the layer that fails
# ---------------------------------------------------------------------------------------------

def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fd_name(fd: int) -> str:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


class _FillsUp:
    """A binary file that accepts `room` bytes and then fails as write(2) does on a full disk."""

    def __init__(self, fh, room: int):
        self._fh, self._room = fh, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self._room:
            self._fh.write(data[:self._room])
            self._room = 0
            raise _enospc()
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def _inject(monkeypatch, where: str, out: Path) -> dict:
    """Make one write of the next index run fail with ENOSPC; returns what was seen."""
    seen: dict = {"hits": 0}
    if where == "sqlite":  # SQLite's own SQLITE_FULL, from the third embedded batch on
        real_commit = store_mod.Store.commit_batch

        def commit_batch(self, *a, **k):
            seen["hits"] += 1
            if seen["hits"] == 3:
                pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
                self.conn.execute(f"PRAGMA max_page_count={pages}")
            return real_commit(self, *a, **k)
        monkeypatch.setattr(store_mod.Store, "commit_batch", commit_batch)
    elif where.endswith(":fsync"):  # delayed allocation / NFS report a full disk at fsync
        name = where.split(":")[0]
        real_fsync = os.fsync

        def fsync(fd):
            if _fd_name(fd).startswith(f".{name}."):
                seen["hits"] += 1
                raise _enospc()
            return real_fsync(fd)
        monkeypatch.setattr(os, "fsync", fsync)
    else:  # the file's writes stop after 16 bytes
        real_fdopen = os.fdopen

        def fdopen(fd, *a, **k):
            fh = real_fdopen(fd, *a, **k)
            if _fd_name(fd).startswith(f".{where}."):
                seen["hits"] += 1
                return _FillsUp(fh, 16)
            return fh
        monkeypatch.setattr(os, "fdopen", fdopen)
    return seen


@pytest.mark.parametrize("where", ["sqlite", "vectors.faiss", "report.json", "index.json", "index.json:fsync"])
def test_disk_full_while_indexing_keeps_the_old_index(tmp_path, stub_encoder, cli, monkeypatch, where):
    folder, out = tmp_path / "archive", tmp_path / "idx"
    _images(folder, 0, OLD)
    _build(folder, out, stub_encoder)
    before = _files(out)
    _images(folder, OLD, NEW)

    seen = _inject(monkeypatch, where, out)
    argv = ["index", folder, "--model", STUB, "--out", out, "--batch-size", 4, "--workers", 0, "--no-progress"]
    code, stdout, err = cli(*argv)
    monkeypatch.undo()
    assert seen["hits"] >= 1  # the fault really fired
    target = out / ("items.sqlite" if where == "sqlite" else where.split(":")[0])
    assert code == 2, (code, stdout, err)
    line = assert_one_line_error(err, "index", f"cannot write {target}: the disk is full",
                                 f"{out} still holds the index from before this run", "run the same command again")
    assert ("database or disk is full" if where == "sqlite" else "No space left on device, errno 28") in line

    assert _files(out) == before and _no_temporaries(out) == []  # byte-identical, nothing half-written
    _assert_old_index_answers(out, stub_encoder, folder)
    con = _db(out)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    embedded_before = _snapshot(out)["states"].count(1)
    if where == "sqlite":
        assert OLD < embedded_before < NEW  # two batches made it before the disk filled up

    code, stdout, err = cli(*argv)  # space is back: the same command finishes the job
    assert code == 0, err
    info = json.loads((out / "index.json").read_text())
    assert info["counts"]["items"] == NEW and info["last_run"]["embedded"] == NEW - embedded_before
    assert len(SearchIndex(out, encoder=stub_encoder)) == NEW


def test_a_killed_publish_leaves_no_stale_temporaries(tmp_path, stub_encoder):
    """A kill between writing a temporary and renaming it leaves `.NAME.XXXX.tmp` behind (as big
    as the FAISS file); the next run on the directory removes it, and nothing else."""
    folder, out = tmp_path / "archive", tmp_path / "idx"
    _images(folder, 0, 4)
    _build(folder, out, stub_encoder)
    stale = [out / ".vectors.faiss.123.tmp", out / ".index.json.abc.tmp", out / ".vectors.faiss.4242.tmp"]
    keep = [out / ".notes.tmp", out / "vectors.faiss.tmp"]
    for p in stale + keep:
        p.write_bytes(b"x" * 10)
    _build(folder, out, stub_encoder)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


# ---------------------------------------------------------------------------------------------
# disk full for real: a 8 MiB tmpfs in a private mount namespace
# ---------------------------------------------------------------------------------------------

REAL_CHILD = r"""
import json, os, sys
sys.path[:0] = [os.environ["SEARCH_TESTS"], os.environ["ROBUSTNESS_TESTS"]]
from search_support import STUB, StubModel
from priorclip.search import ann, store
from priorclip.search.encoders import ModelEncoder, register_encoder
from priorclip.search.query import SearchIndex
from test_robust_index_faults import _images
from priorclip.cli.main import main
import contextlib, io
from pathlib import Path

register_encoder(STUB, lambda: ModelEncoder(StubModel()))
disk, folder, when, free, new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
out = os.path.join(disk, "idx")
argv = ["index", folder, "--model", STUB, "--out", out, "--batch-size", "16", "--workers", "0", "--no-progress",
        "--index-type", "flat"]
def cli():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()

_images(Path(folder), 0, 20)
assert cli()[0] == 0
before = {n: open(os.path.join(out, n), "rb").read() for n in ("vectors.faiss", "report.json", "index.json")}
_images(Path(folder), 20, new)
filler = os.path.join(disk, "filler")

def fill():  # another program takes the disk, leaving `free` bytes
    st = os.statvfs(disk)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * (st.f_bavail * st.f_frsize - free))

real_build = ann.build
if when == "start":
    fill()
else:
    def build(*a, **k):  # the FAISS structure is built; its files are written next
        r = real_build(*a, **k)
        fill()
        return r
    ann.build = build
code, err = cli()
os.unlink(filler)
ann.build = real_build
after = {n: open(os.path.join(out, n), "rb").read() for n in before}
idx = SearchIndex(out, encoder=ModelEncoder(StubModel()))
res = {"code": code, "err": err, "unchanged": after == before, "loaded": len(idx),
       "hits": len(idx.search_text("roads", k=50)), "tmp": [p for p in os.listdir(out) if p.endswith(".tmp")]}
res["rerun"] = cli()[0]
res["final"] = len(SearchIndex(out, encoder=ModelEncoder(StubModel())))
print("RESULT " + json.dumps(res))
"""


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k none {where}"],
                           check=False, capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("when,free", [("start", 0), ("start", 40960), ("publish", 40960), ("publish", 49152)],
                         ids=["full-before-the-run", "sqlite-full", "faiss-tail", "json-files"])
def test_real_disk_full_on_a_small_tmpfs(tmp_path, when, free):
    """The same on a real file system: an 8 MiB tmpfs (private user and mount namespace, no root
    needed) that another writer fills up, leaving `free` bytes, before the run or once the FAISS
    structure is built. 315 images of dim 32 make a 40,890-byte FAISS file; with 40 KiB free its
    vector block fits and only the buffered tail fails, when FAISS's own writer closes the file,
    which FAISS only prints to stderr: the truncated file used to replace the good one and the
    run said "index ready". On a completely full disk SQLite cannot even map its WAL index
    (SQLITE_IOERR_SHMSIZE), which is reported as a full disk too."""
    disk, folder = tmp_path / "disk", tmp_path / "archive"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    env = {**os.environ, "SEARCH_TESTS": str(SEARCH_TESTS), "ROBUSTNESS_TESTS": str(Path(__file__).parent)}
    script = tmp_path / "child.py"
    script.write_text(REAL_CHILD)
    shell = (f"mount -t tmpfs -o size=8m none {disk} && exec {sys.executable} {script} {disk} {folder} "
             f"{when} {free} 315")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert res["code"] == 2, res
    line = assert_one_line_error(res["err"], "index", f"cannot write {disk / 'idx'}/", ": the disk is full",
                                 "still holds the index from before this run")
    failed = line.split("cannot write ", 1)[1].split(":", 1)[0]
    # which published file meets the full disk depends on the file system's block accounting
    assert os.path.basename(failed) in (("items.sqlite",) if when == "start" else PUBLISHED), line
    assert res["unchanged"] and res["tmp"] == [], res
    assert res["loaded"] == 20 and res["hits"] == 20, res  # the old index, whole
    assert res["rerun"] == 0 and res["final"] == 315, res


# ---------------------------------------------------------------------------------------------
# interrupted after files were removed or changed
# ---------------------------------------------------------------------------------------------

def test_old_index_still_gives_k_hits_after_an_interrupted_run_removed_and_changed_files(
        tmp_path, stub_encoder, monkeypatch):
    """A re-index deletes removed and changed files' items from SQLite at its start, but publishes
    the new FAISS file only at its end: killed in between, the old FAISS file holds vectors whose
    items are gone. Queries skip those and look further, so they still return k hits."""
    from priorclip.search import index as index_mod

    folder, out = tmp_path / "archive", tmp_path / "idx"
    _images(folder, 0, OLD)
    _build(folder, out, stub_encoder)
    for i in range(4):  # removed
        (folder / f"{i:04d}.png").unlink()
    _images(folder, 100, 102)  # two other pictures ...
    for i, j in ((4, 100), (5, 101)):  # ... replace two files (same names, new contents)
        (folder / f"{j:04d}.png").replace(folder / f"{i:04d}.png")
    unchanged = {str((folder / f"{i:04d}.png").resolve()) for i in range(6, OLD)}

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # the run stops before anything is published
    monkeypatch.setattr(index_mod, "_publish", killed)
    with pytest.raises(KeyboardInterrupt):
        _build(folder, out, stub_encoder)
    monkeypatch.undo()

    idx = SearchIndex(out, encoder=stub_encoder)
    assert len(idx) == OLD  # the old FAISS file, with 6 vectors whose items were deleted
    for text in ("a parking lot", "dense forest", "green fields near a river"):
        every = idx.search_text(text, k=OLD)
        assert {h["path"] for h in every} == unchanged  # only live items, each once
        for k in (1, 3, len(unchanged)):
            hits = idx.search_text(text, k=k)
            assert [h["id"] for h in hits] == [h["id"] for h in every[:k]]
            assert [h["rank"] for h in hits] == list(range(1, k + 1))
    _build(folder, out, stub_encoder)  # the rerun finishes the job
    assert len(SearchIndex(out, encoder=stub_encoder)) == OLD - 4
