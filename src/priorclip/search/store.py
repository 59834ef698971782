"""On-disk layout of an index directory and its two stores.

    INDEX_DIR/
      index.json      what made the index (model, tiling, counts, FAISS type, recall); written last
      items.sqlite    files, items (image or tile, window, lon/lat footprint) and their vectors
      vectors.faiss   the search structure, rebuilt from items.sqlite after each run
      vectors.rerank.npy, vectors.rerank-ids.npy
                      `ivfpq` / `ivfpq-sq8` only: the float32 vectors its candidates are re-ranked with
      vectors.sq8.npy `ivfpq-sq8` only: 8-bit copies of them, held in RAM
      report.json     files that could not be read and why

Format 2 added the bands shown as RGB per file (`files.rgb`) and each item's valid fraction
(`items.valid_fraction`, state 2 = below --min-valid, not embedded). A format-1 database gains
the columns when a writer opens it; a reader (the server) sees them as NULL, "unknown".

SQLite is the source of truth: each embedded batch is committed in one transaction, so a killed run
loses at most the batch in flight and a rerun embeds only the items still without a vector. The
FAISS file, report.json and index.json are published together by `publish`: all three are
written and fsynced under temporary names first and renamed over the old ones only when all are
on disk, so a full disk or a kill while writing leaves the previous index loadable.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from priorclip.errors import DataError
from priorclip.fileio import fsync_path

INDEX_JSON = "index.json"
DB_NAME = "items.sqlite"
FAISS_NAME = "vectors.faiss"
RERANK_NAME, RERANK_IDS_NAME = "vectors.rerank.npy", "vectors.rerank-ids.npy"  # an ivfpq index's exact vectors
SQ8_NAME = "vectors.sq8.npy"  # an ivfpq-sq8 index's 8-bit copies of them
RERANK_FILES = (RERANK_NAME, RERANK_IDS_NAME, SQ8_NAME)  # beside vectors.faiss for some index types only
REPORT_NAME = "report.json"
FORMAT_VERSION = 2
# (table, column, type) added after format 1; ALTER TABLE adds them to an older database
_ADDED_COLUMNS = (("files", "rgb", "TEXT"), ("items", "valid_fraction", "REAL"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (root_id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS files (
  file_id INTEGER PRIMARY KEY AUTOINCREMENT,
  path TEXT UNIQUE NOT NULL,
  root_id INTEGER NOT NULL REFERENCES roots(root_id),
  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  kind TEXT, raster INTEGER NOT NULL DEFAULT 0,
  width INTEGER, height INTEGER, bands INTEGER, dtype TEXT, crs TEXT, stretch TEXT,
  rgb TEXT,                                 -- JSON RgbBands: bands shown as R, G, B and why
  status TEXT NOT NULL DEFAULT 'planned',   -- planned | failed
  error TEXT
);
CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  file_id INTEGER NOT NULL REFERENCES files(file_id) ON DELETE CASCADE,
  kind TEXT NOT NULL,                       -- image | tile
  col INTEGER, row INTEGER, w INTEGER, h INTEGER,
  bounds TEXT, footprint TEXT,
  state INTEGER NOT NULL DEFAULT 0,         -- 0 pending, 1 embedded, -1 failed, 2 below --min-valid
  error TEXT,
  valid_fraction REAL                       -- share of valid pixels; NULL = not measured yet
);
CREATE INDEX IF NOT EXISTS items_file ON items(file_id);
CREATE INDEX IF NOT EXISTS items_state ON items(state);
CREATE TABLE IF NOT EXISTS vectors (
  id INTEGER PRIMARY KEY REFERENCES items(id) ON DELETE CASCADE,
  vec BLOB NOT NULL
);
"""

# Lon/lat boxes of the items in an R*Tree (SQLite's spatial index), kept by triggers, so a bbox
# filter reads the candidates of an area without a scan. Items without bounds are not in it.
_SPATIAL = """
CREATE VIRTUAL TABLE IF NOT EXISTS items_rtree USING rtree(id, minlon, maxlon, minlat, maxlat);
CREATE TRIGGER IF NOT EXISTS items_rtree_insert AFTER INSERT ON items WHEN new.bounds IS NOT NULL BEGIN
  INSERT INTO items_rtree VALUES (new.id, json_extract(new.bounds, '$[0]'), json_extract(new.bounds, '$[2]'),
                                  json_extract(new.bounds, '$[1]'), json_extract(new.bounds, '$[3]'));
END;
CREATE TRIGGER IF NOT EXISTS items_rtree_delete AFTER DELETE ON items BEGIN
  DELETE FROM items_rtree WHERE id = old.id;
END;
"""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
PUBLISHED = (FAISS_NAME, *RERANK_FILES, REPORT_NAME, INDEX_JSON)  # written by `publish`, index.json last


def write_error(exc: BaseException, path: str | Path, directory: str | Path | None = None) -> DataError:
    """A user-facing error for a failed write of `path`: disk full (ENOSPC, quota, SQLITE_FULL)
    is said in words, with what is left and what to do, instead of a traceback."""
    directory = Path(directory) if directory is not None else Path(path).parent
    code = getattr(exc, "errno", None)
    sqlite_name = getattr(exc, "sqlite_errorname", None) or ""
    todo = "Free some space"
    if code in DISK_FULL_ERRNOS:
        what = ("the disk quota is exceeded" if code == errno.EDQUOT else "the disk is full") + \
               f" ({os.strerror(code)}, errno {code})"
    elif sqlite_name == "SQLITE_FULL":
        what = f"the disk is full ({exc})"
    elif sqlite_name.startswith("SQLITE_IOERR") and _free_bytes(directory) < (1 << 20):
        # a WAL database on a full disk cannot even map its shared-memory file (SQLITE_IOERR_SHMSIZE)
        what = f"the disk is full ({_free_bytes(directory)} bytes free; SQLite: {exc}, {sqlite_name})"
    else:
        what = f"{getattr(exc, 'strerror', None) or exc}" + (f" ({sqlite_name})" if sqlite_name else "")
        todo = "Fix that"
    if (directory / INDEX_JSON).is_file():
        left = f"{directory} still holds the index from before this run, unchanged and searchable"
    else:
        left = f"no index was published in {directory} yet"
    return DataError(f"cannot write {path}: {what}. {left}; the images embedded so far are kept. "
                     f"{todo} and run the same command again to finish.")


def _free_bytes(directory: Path) -> int:
    try:
        st = os.statvfs(directory)
        return st.f_bavail * st.f_frsize
    except OSError:
        return 1 << 62


def write_faiss(index, fh: BinaryIO) -> None:
    """Serialise a FAISS index into an open file. FAISS's own file writer only prints a failed
    final flush (disk full) to stderr and carries on with a truncated file; through a Python
    file object every failed write raises OSError."""
    import faiss

    faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))


def publish(directory: str | Path, files: dict[str, bytes | Callable[[BinaryIO], None]]) -> None:
    """Replace files of `directory` (name -> bytes, or a function writing into a binary file)
    all or none, as far as write errors go: every file is written and fsynced under a temporary
    name first; only when all are on disk are they renamed over the old ones, in the given order.
    A failed write (disk full...) removes the temporary files, leaves the old ones untouched and
    raises a DataError naming the file. A kill during the renames leaves old and new files that
    each load; the next run replaces them all."""
    directory = Path(directory)
    staged: list[tuple[str, Path]] = []
    try:
        for name, content in files.items():
            path = directory / name
            try:
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
                staged.append((tmp, path))
                with os.fdopen(fd, "wb") as fh:
                    if callable(content):
                        content(fh)
                    else:
                        fh.write(content)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise write_error(exc, path, directory) from exc
        while staged:
            tmp, path = staged[0]
            os.replace(tmp, path)
            staged.pop(0)
        fsync_path(directory)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Temporary files of a `publish` that was killed (they can be as large as the FAISS file).
    Call only while holding the directory's writer lock."""
    gone = []
    for p in Path(directory).glob(".*.tmp"):
        if p.name.startswith(tuple(f".{n}." for n in PUBLISHED)):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    publish(path.parent, {path.name: data})


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def read_index_json(directory: str | Path) -> dict:
    path = Path(directory) / INDEX_JSON
    if not path.is_file():
        raise DataError(f"{path} not found: {directory} is not a finished index (run `priorclip index ... --out {directory}`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable index description ({exc})") from exc


def read_report(directory: str | Path) -> list[tuple[str, str]]:
    """(path, reason) of every input the index lacks, from its report.json: unreadable files and
    tiles, and files skipped by the walk (symlinks out of the roots). What the CLI lists and
    turns into exit status 1."""
    path = Path(directory) / REPORT_NAME
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable report ({exc}); run `priorclip index` again to rewrite it") from exc
    out = []
    for f in report.get("failed", []):
        where = f" [window {','.join(map(str, f['window']))}]" if f.get("window") else ""
        out.append((f["path"] + where, f.get("error") or "unreadable"))
    out += [(s["path"], s.get("reason") or "skipped") for s in report.get("skipped", [])]
    return out


class Store:
    """SQLite access for one index directory. Writers use one connection; readers (the server)
    get one read-only connection per thread, as sqlite3 connections are not shared across
    threads."""

    def __init__(self, directory: str | Path, readonly: bool = False):
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.readonly = readonly
        self._local = threading.local()
        if readonly:
            if not self.path.is_file():
                raise DataError(f"{self.path} not found: {directory} is not an index directory")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            con = self.conn
            con.executescript(_SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
            con.commit()
            self._upgrade()
            self._add_spatial_index()
        self._missing = self._missing_columns()
        self._has_rtree = self._rtree_exists()

    def _rtree_exists(self) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE name='items_rtree'").fetchone() is not None

    def _add_spatial_index(self) -> None:
        """Create the R*Tree and its triggers; an index made before them gets its boxes filled in."""
        if self._rtree_exists():
            return
        with self.conn:
            self.conn.executescript(_SPATIAL)
            self.conn.execute(
                "INSERT INTO items_rtree SELECT id, json_extract(bounds, '$[0]'), json_extract(bounds, '$[2]'), "
                "json_extract(bounds, '$[1]'), json_extract(bounds, '$[3]') FROM items WHERE bounds IS NOT NULL")

    def _missing_columns(self) -> set[str]:
        have = {(t, r["name"]) for t in ("files", "items") for r in self.conn.execute(f"PRAGMA table_info({t})")}
        return {c for t, c, _ in _ADDED_COLUMNS if (t, c) not in have}

    def _upgrade(self) -> None:
        """Bring a format-1 database to this format: add the new columns (NULL = unknown)."""
        missing = self._missing_columns()
        if not missing:
            return
        with self.conn:
            for table, column, kind in _ADDED_COLUMNS:
                if column in missing:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))

    def _col(self, table: str, column: str) -> str:
        """`table.column`, or NULL under its name for a read-only format-1 database."""
        return f"NULL AS {column}" if column in self._missing else f"{table}.{column} AS {column}"

    @property
    def conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            if self.readonly:
                con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            else:
                con = sqlite3.connect(self.path, timeout=30)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA foreign_keys=ON")
            con.row_factory = sqlite3.Row
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # ---- metadata -------------------------------------------------------------------------
    def start_ids_at(self, first: int) -> None:
        """Make new file and item ids count from `first` (a shard's own range), unless they are past it."""
        with self.conn:
            for table in ("files", "items"):
                row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (table,)).fetchone()
                if row is None:
                    self.conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, first))
                elif row[0] < first:
                    self.conn.execute("UPDATE sqlite_sequence SET seq=? WHERE name=?", (first, table))

    def get_meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def root_ids(self, roots: Iterable[str]) -> dict[str, int]:
        with self.conn:
            for r in roots:
                self.conn.execute("INSERT OR IGNORE INTO roots(path) VALUES (?)", (r,))
        return {r["path"]: r["root_id"] for r in self.conn.execute("SELECT * FROM roots")}

    def roots(self) -> dict[int, str]:
        return {r["root_id"]: r["path"] for r in self.conn.execute("SELECT * FROM roots")}

    # ---- files ----------------------------------------------------------------------------
    def files_by_path(self) -> dict[str, sqlite3.Row]:
        return {r["path"]: r for r in self.conn.execute("SELECT * FROM files")}

    def delete_files(self, file_ids: Iterable[int]) -> None:
        ids = [(int(i),) for i in file_ids]
        if ids:
            with self.conn:
                self.conn.executemany("DELETE FROM files WHERE file_id=?", ids)

    def put_file(self, path: str, root_id: int, size: int, mtime_ns: int, *, plan=None,
                 raster: bool = False, error: str | None = None) -> int:
        """Insert (or replace) a file and its planned items in one transaction."""
        with self.conn:
            self.conn.execute("DELETE FROM files WHERE path=?", (path,))
            if plan is None:
                cur = self.conn.execute(
                    "INSERT INTO files(path, root_id, size, mtime_ns, raster, status, error) "
                    "VALUES (?,?,?,?,?, 'failed', ?)", (path, root_id, size, mtime_ns, int(raster), error))
                return cur.lastrowid
            rgb = getattr(plan, "rgb", None)
            cur = self.conn.execute(
                "INSERT INTO files(path, root_id, size, mtime_ns, kind, raster, width, height, bands, "
                "dtype, crs, stretch, rgb, status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?, 'planned')",
                (path, root_id, size, mtime_ns, plan.kind, int(raster), plan.width, plan.height,
                 plan.bands, plan.dtype, plan.crs, json.dumps(plan.stretch) if plan.stretch else None,
                 json.dumps(rgb.to_dict()) if rgb is not None else None))
            file_id = cur.lastrowid
            self.conn.executemany(
                "INSERT INTO items(file_id, kind, col, row, w, h, bounds, footprint) VALUES (?,?,?,?,?,?,?,?)",
                [(file_id, it["kind"], *it["window"],
                  json.dumps(it["bounds"]) if it["bounds"] else None,
                  json.dumps(it["footprint"]) if it["footprint"] else None) for it in plan.items])
            return file_id

    # ---- items & vectors ------------------------------------------------------------------
    def pending_items(self) -> list[dict]:
        q = ("SELECT items.id, items.kind, items.col, items.row, items.w, items.h, files.path, files.raster, "
             "files.stretch, files.rgb FROM items JOIN files USING(file_id) WHERE items.state=0 ORDER BY items.id")
        rows = self.conn.execute(q).fetchall()
        out = []
        for r in rows:
            out.append({"id": r["id"], "path": r["path"], "raster": bool(r["raster"]),
                        "window": [r["col"], r["row"], r["w"], r["h"]] if r["kind"] == "tile" else None,
                        "stretch": json.loads(r["stretch"]) if r["stretch"] else None,
                        "rgb": json.loads(r["rgb"]) if r["rgb"] else None})
        return out

    def apply_min_valid(self, min_valid: float) -> tuple[int, int]:
        """Re-sort measured items by a new --min-valid without decoding anything: items skipped
        before that now pass become pending, embedded ones that now fail lose their vector.
        Returns (revived, dropped)."""
        with self.conn:
            revived = self.conn.execute(
                "UPDATE items SET state=0 WHERE state=2 AND valid_fraction > 0 AND valid_fraction >= ?",
                (min_valid,)).rowcount
            dropped_ids = [r[0] for r in self.conn.execute(
                "SELECT id FROM items WHERE state=1 AND valid_fraction IS NOT NULL AND "
                "(valid_fraction <= 0 OR valid_fraction < ?)", (min_valid,))]
            self.conn.executemany("DELETE FROM vectors WHERE id=?", [(i,) for i in dropped_ids])
            self.conn.executemany("UPDATE items SET state=2 WHERE id=?", [(i,) for i in dropped_ids])
        return revived, len(dropped_ids)

    def reset_failed_items(self) -> int:
        """Make items that failed to decode pending again (for --retry-failed)."""
        with self.conn:
            return self.conn.execute("UPDATE items SET state=0, error=NULL WHERE state=-1").rowcount

    def commit_batch(self, ids: list[int], vectors: np.ndarray, failures: list[tuple[int, str]] = (), *,
                     valid: list[float | None] | None = None, nodata: list[tuple[int, float]] = ()) -> None:
        """Store one batch atomically: vectors with their items' valid fractions (`valid`, in the
        order of `ids`), failed items, and items skipped as below --min-valid (`nodata`)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        valid = list(valid) if valid is not None else [None] * len(ids)
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO vectors(id, vec) VALUES (?, ?)",
                                  [(int(i), v.tobytes()) for i, v in zip(ids, vectors)])
            self.conn.executemany("UPDATE items SET state=1, error=NULL, valid_fraction=? WHERE id=?",
                                  [(vf, int(i)) for i, vf in zip(ids, valid)])
            self.conn.executemany("UPDATE items SET state=-1, error=? WHERE id=?",
                                  [(err, int(i)) for i, err in failures])
            self.conn.executemany("UPDATE items SET state=2, error=NULL, valid_fraction=? WHERE id=?",
                                  [(float(vf), int(i)) for i, vf in nodata])

    def iter_vectors(self, dim: int, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = -1
        while True:
            rows = self.conn.execute(
                "SELECT vectors.id, vec FROM vectors JOIN items USING(id) WHERE items.state=1 AND "
                "vectors.id>? ORDER BY vectors.id LIMIT ?", (last, chunk)).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            last = int(ids[-1])
            yield ids, vecs

    def all_vectors(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        parts = list(self.iter_vectors(dim))
        if not parts:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def ids_in_bbox(self, box, limit: int | None = None) -> list[int] | None:
        """Embedded items whose footprint meets the lon/lat `box` (a `spatial.BBox`): R*Tree
        candidates (or, in a read-only index made before it had one, a scan of the stored boxes),
        then the exact polygon test. None when the box holds more than `limit` candidates."""
        from priorclip.search.spatial import footprints_intersecting

        rows = []
        for minlon, minlat, maxlon, maxlat in box.parts():
            if self._has_rtree:
                # CROSS JOIN keeps the R*Tree the outer loop: with a plain JOIN SQLite's planner
                # scans every embedded item (items_state) and probes the tree once per item
                # the tree's own (float32, rounded outwards) box: no JSON to parse, and a box inside
                # the query box still proves a hit (footprints_intersecting)
                # (an item without footprint is tested by its exact stored box)
                q = ("SELECT items.id, items.footprint, items_rtree.minlon, items_rtree.minlat, items_rtree.maxlon, "
                     "items_rtree.maxlat, CASE WHEN items.footprint IS NULL THEN items.bounds END "
                     "FROM items_rtree CROSS JOIN items "
                     "ON items.id = items_rtree.id WHERE items_rtree.minlon <= ? AND items_rtree.maxlon >= ? AND items_rtree.minlat <= ? "
                     "AND items_rtree.maxlat >= ? AND items.state = 1")
            else:
                q = ("SELECT id, footprint, bounds FROM items WHERE bounds IS NOT NULL AND state = 1 AND "
                     "json_extract(bounds, '$[0]') <= ? AND json_extract(bounds, '$[2]') >= ? AND "
                     "json_extract(bounds, '$[1]') <= ? AND json_extract(bounds, '$[3]') >= ?")
            args = (maxlon, minlon, maxlat, minlat)
            if limit is not None:
                q, args = q + " LIMIT ?", (*args, limit + 1)
            rows += [(r[0], r[1], (r[6] or r[2:6]) if len(r) > 3 else r[2]) for r in self.conn.execute(q, args)]
            if limit is not None and len(rows) > limit:
                return None
        return sorted(set(footprints_intersecting(box, list({r[0]: r for r in rows}.values()))))

    def meeting(self, box, ids: list[int]) -> list[int]:
        """Those of `ids` whose footprint meets `box` (items without georeference never do)."""
        from priorclip.search.spatial import footprints_intersecting

        rows = self.conn.execute("SELECT id, footprint, bounds FROM items WHERE id IN (SELECT value FROM json_each(?)) "
                                 "AND bounds IS NOT NULL", (json.dumps([int(i) for i in ids]),)).fetchall()
        return footprints_intersecting(box, [tuple(r) for r in rows])

    def vectors_of(self, ids: list[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors [n, dim]) of the given items that have a vector, in one query."""
        rows = self.conn.execute("SELECT id, vec FROM vectors WHERE id IN (SELECT value FROM json_each(?))",
                                 (json.dumps([int(i) for i in ids]),)).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        return (np.array([r[0] for r in rows], dtype=np.int64),
                np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim))

    def vector(self, item_id: int, dim: int) -> np.ndarray | None:
        row = self.conn.execute("SELECT vec FROM vectors WHERE id=?", (int(item_id),)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).reshape(dim)

    def counts(self) -> dict:
        c = self.conn
        files = c.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        failed_files = c.execute("SELECT COUNT(*) FROM files WHERE status='failed'").fetchone()[0]
        scenes = c.execute("SELECT COUNT(*) FROM files WHERE kind='scene'").fetchone()[0]
        by_state = dict(c.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
        tiles = c.execute("SELECT COUNT(*) FROM items WHERE kind='tile' AND state=1").fetchone()[0]
        return {"files": files, "scenes": scenes, "failed_files": failed_files,
                "items": by_state.get(1, 0), "tiles": tiles,
                "pending_items": by_state.get(0, 0), "failed_items": by_state.get(-1, 0),
                "nodata_items": by_state.get(2, 0)}

    def failures(self) -> list[dict]:
        out = [{"path": r["path"], "error": r["error"]}
               for r in self.conn.execute("SELECT path, error FROM files WHERE status='failed' ORDER BY path")]
        out += [{"path": r["path"], "error": r["error"],
                 **({"window": [r["col"], r["row"], r["w"], r["h"]]} if r["kind"] == "tile" else {})}
                for r in self.conn.execute(
                    "SELECT files.path, items.kind, col, row, w, h, items.error FROM items JOIN files USING(file_id) "
                    "WHERE items.state=-1 ORDER BY items.id")]
        return out

    def _item_sql(self) -> str:
        return ("SELECT items.id, items.kind, items.col, items.row, items.w, items.h, items.bounds, "
                "items.footprint, items.state, files.file_id, files.path, files.root_id, files.kind AS file_kind, "
                "files.raster, files.width, files.height, files.crs, files.stretch, files.dtype, files.bands, "
                f"{self._col('files', 'rgb')}, {self._col('items', 'valid_fraction')} "
                "FROM items JOIN files USING(file_id) ")

    def items(self, ids: Iterable[int]) -> dict[int, dict]:
        ids = [int(i) for i in ids]
        out: dict[int, dict] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            q = self._item_sql() + f"WHERE items.id IN ({','.join('?' * len(part))})"
            for r in self.conn.execute(q, part):
                out[r["id"]] = _item_dict(r)
        return out

    def item(self, item_id: int) -> dict | None:
        return self.items([item_id]).get(int(item_id))

    def scene(self, file_id: int) -> dict | None:
        r = self.conn.execute("SELECT * FROM files WHERE file_id=? AND kind='scene'", (int(file_id),)).fetchone()
        if r is None:
            return None
        return {"scene_id": r["file_id"], "path": r["path"], "root_id": r["root_id"], "width": r["width"],
                "height": r["height"], "crs": r["crs"], "bands": r["bands"], "dtype": r["dtype"],
                "stretch": json.loads(r["stretch"]) if r["stretch"] else None,
                "rgb": json.loads(r["rgb"]) if "rgb" in r.keys() and r["rgb"] else None,
                "tiles": self.conn.execute("SELECT COUNT(*) FROM items WHERE file_id=? AND state=1",
                                           (int(file_id),)).fetchone()[0],
                "bounds": self._scene_bounds(file_id)}

    def _scene_bounds(self, file_id: int) -> list[float] | None:
        """Lon/lat box (west, south, east, north) of a whole scene, for placing its overview on a
        map: the union of its tiles' stored boxes, which cover the scene (the last tile of a row or
        column ends at its edge), failed and nodata tiles included. None if not georeferenced."""
        from priorclip.search.spatial import union_bounds

        rows = self.conn.execute("SELECT bounds FROM items WHERE file_id=? AND bounds IS NOT NULL",
                                 (int(file_id),)).fetchall()
        return union_bounds(json.loads(r[0]) for r in rows)


def _item_dict(r: sqlite3.Row) -> dict:
    return {
        "id": r["id"], "kind": r["kind"], "path": r["path"], "root_id": r["root_id"],
        "window": [r["col"], r["row"], r["w"], r["h"]],
        "bounds": json.loads(r["bounds"]) if r["bounds"] else None,
        "footprint": json.loads(r["footprint"]) if r["footprint"] else None,
        "crs": r["crs"], "raster": bool(r["raster"]),
        "scene_id": r["file_id"] if r["file_kind"] == "scene" else None,
        "scene_size": [r["width"], r["height"]] if r["file_kind"] == "scene" else None,
        "stretch": json.loads(r["stretch"]) if r["stretch"] else None,
        "rgb": json.loads(r["rgb"]) if r["rgb"] else None,
        "valid_fraction": r["valid_fraction"], "bands": r["bands"], "dtype": r["dtype"],
        "embedded": r["state"] == 1,
    }
