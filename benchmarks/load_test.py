"""Load test of `priorclip serve`'s API, in-process, on loopback only (not a test: prints numbers).

Builds a small index (synthetic images through a real small model; random weights are fine here,
this measures the server, not retrieval quality) unless --index is given, starts uvicorn on
127.0.0.1 on a free port in a background thread, and has --concurrency clients send a fixed mix of
requests until --requests are done or --seconds have passed:

  text       GET  /api/search?q=...&k=10                 expect 200
  image      POST /api/search/image (PNG upload)         expect 200
  thumbnail  GET  /api/items/{id}/thumbnail              expect 200
  oversize   POST /api/search/image, body > upload limit expect 413 (refused by Content-Length)

Any other status, or a transport error, counts as an error. The server runs in this process, so
its memory is this process's VmRSS (read from /proc/self/status before and after the load).

    .venv/bin/python benchmarks/load_test.py                     # default run, ~1 minute
    .venv/bin/python benchmarks/load_test.py --markdown          # also write RESULTS.md section
    .venv/bin/python benchmarks/load_test.py --index my_index --concurrency 16
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
SECTION = "## Server under load"
KINDS = ("text", "image", "thumbnail", "oversize")
EXPECTED = {"text": 200, "image": 200, "thumbnail": 200, "oversize": 413}
# One cycle of the mix (per 20 requests): mostly searches and thumbnails, one oversize upload.
MIX = ["text", "thumbnail", "image", "text", "thumbnail", "text", "image", "thumbnail", "text", "oversize",
       "text", "thumbnail", "image", "text", "thumbnail", "text", "image", "thumbnail", "text", "thumbnail"]
UPLOAD_LIMIT = 2 * 1024 * 1024  # smaller than the server default so oversize bodies stay cheap to send
QUERIES = ["an airport with planes", "many cars in a parking lot", "green farmland fields", "a river through land",
           "a sandy beach next to the sea", "dense residential houses", "white storage tanks",
           "tennis and basketball courts", "boats in a harbor", "bare desert sand", "buildings", "water"]


def vm_rss_mb() -> float:
    """This process's resident set size (MB) from /proc; the server lives in this process."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def build_small_index(work: Path, model: str, n_per_class: int, image_size: int):
    from priorclip.data.synthetic import generate_synthetic_dataset
    from priorclip.search.encoders import load_encoder
    from priorclip.search.index import build_index

    generate_synthetic_dataset(work / "data", n_per_class=n_per_class, image_size=image_size)
    encoder = load_encoder(model)
    build_index([work / "data" / "images"], work / "index", encoder, model_spec=model, progress=False,
                log=lambda *_: None)
    return work / "index", encoder


def png_bytes(seed: int, size: int = 96) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class ServerThread:
    """uvicorn on 127.0.0.1, a free port picked by the kernel, in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def run_load(base_url: str, item_ids: list[int], requests: int, seconds: float, concurrency: int,
             upload_limit: int) -> dict:
    """Send the mix from `concurrency` threads; return per-request (kind, status, seconds)."""
    uploads = [png_bytes(s) for s in range(4)]
    oversize = b"\0" * (upload_limit + 1)
    counter = iter(range(requests))
    lock = threading.Lock()
    records: list[tuple[str, int, float]] = []
    failures: list[str] = []
    deadline = time.monotonic() + seconds

    def one(client: httpx.Client, n: int) -> tuple[str, int]:
        kind = MIX[n % len(MIX)]
        if kind == "text":
            r = client.get("/api/search", params={"q": QUERIES[n % len(QUERIES)], "k": 10})
        elif kind == "thumbnail":
            r = client.get(f"/api/items/{item_ids[n % len(item_ids)]}/thumbnail", params={"size": 128})
        elif kind == "image":
            r = client.post("/api/search/image", params={"k": 10},
                            files={"file": ("q.png", uploads[n % len(uploads)], "image/png")})
        else:
            r = client.post("/api/search/image", content=oversize, headers={"Content-Type": "image/png"})
        return kind, r.status_code

    def worker():
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while time.monotonic() < deadline:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                t = time.perf_counter()
                try:
                    kind, status = one(client, n)
                except httpx.HTTPError as exc:
                    kind, status = MIX[n % len(MIX)], -1
                    with lock:
                        failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                dt = time.perf_counter() - t
                with lock:
                    records.append((kind, status, dt))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"records": records, "wall_s": wall, "transport_errors": failures}


def summarise(records, wall_s: float) -> dict:
    out = {"requests": len(records), "wall_s": round(wall_s, 2),
           "requests_per_s": round(len(records) / wall_s, 1) if wall_s > 0 else 0.0,
           "errors": sum(1 for k, s, _ in records if s != EXPECTED[k]), "endpoints": {}}
    for kind in KINDS:
        rows = [(s, dt) for k, s, dt in records if k == kind]
        if not rows:
            continue
        ms = np.array([dt for _, dt in rows]) * 1000
        statuses: dict[str, int] = {}
        for s, _ in rows:
            statuses[str(s)] = statuses.get(str(s), 0) + 1
        out["endpoints"][kind] = {"n": len(rows), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                                  "p99_ms": round(float(np.percentile(ms, 99)), 1),
                                  "errors": sum(1 for s, _ in rows if s != EXPECTED[kind]), "statuses": statuses}
    return out


def table(res: dict) -> str:
    lines = ["| endpoint | expected | requests | p50 ms | p99 ms | errors | statuses |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for kind, e in res["endpoints"].items():
        st = ", ".join(f"{k}: {v}" for k, v in sorted(e["statuses"].items()))
        lines.append(f"| {kind} | {EXPECTED[kind]} | {e['n']} | {e['p50_ms']} | {e['p99_ms']} | {e['errors']} | {st} |")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    mem = res["rss_mb"]
    return "\n".join([
        f"Machine: {platform.machine()}, {os.cpu_count()} cores visible, load average "
        f"{res['loadavg'][0]:.2f} at start, {res['loadavg'][1]:.2f} at end; {res['date']}.",
        f"Index: {res['index_items']} items ({res['index_desc']}), model `{res['model']}` (random weights), CPU. "
        f"uvicorn in a thread of the measuring process on 127.0.0.1, {res['concurrency']} concurrent httpx "
        f"clients, bounded by {res['limit_requests']} requests / {res['limit_seconds']:.0f} s; upload limit "
        f"{res['upload_limit'] // 1024} KiB, oversize bodies are limit + 1 byte.", "",
        f"**{res['requests']} requests in {res['wall_s']} s = {res['requests_per_s']} requests/s; "
        f"{res['errors']} errors** (any status other than the expected one, or a transport error).", "",
        table(res), "",
        f"Memory (VmRSS of the process holding the server): {mem['before']:.0f} MB before the load, "
        f"{mem['after']:.0f} MB after, {mem['after'] - mem['before']:+.0f} MB; after a second identical "
        f"round {mem['after2']:.0f} MB ({mem['after2'] - mem['after']:+.0f} MB). The first round also fills the "
        "bounded thumbnail cache (64 MB by default), the server's worker threads and allocator pools; the "
        "second round's change is what repeated load adds.",
        "",
    ])


def run(args) -> dict:
    from priorclip.search.query import SearchIndex
    from priorclip.search.server import create_app

    with tempfile.TemporaryDirectory(prefix="priorclip-load-") as tmp:
        if args.index:
            index_dir, encoder = Path(args.index), None
            desc = str(index_dir)
        else:
            index_dir, encoder = build_small_index(Path(tmp), args.model, args.n_per_class, args.image_size)
            desc = f"synthetic, {args.n_per_class} per class, {args.image_size} px"
        index = SearchIndex(index_dir, encoder=encoder)
        model = index.info["model"].get("name")
        item_ids = [int(i) for i in index.store.all_vectors(index.dim)[0][:200]]
        app = create_app(index, max_upload_bytes=args.upload_limit)
        load0 = os.getloadavg()[0]
        with ServerThread(app) as srv:
            with httpx.Client(base_url=srv.url, timeout=60) as c:  # warm-up: model, thread pool, caches
                c.get("/api/search", params={"q": "warm up"}).raise_for_status()
                c.post("/api/search/image", files={"file": ("w.png", png_bytes(99), "image/png")}).raise_for_status()
                c.get(f"/api/items/{item_ids[0]}/thumbnail", params={"size": 128}).raise_for_status()
            rss_before = vm_rss_mb()
            out = run_load(srv.url, item_ids, args.requests, args.seconds, args.concurrency, args.upload_limit)
            rss_after = vm_rss_mb()
            # A second identical round: memory held after it should match the first (no per-request growth).
            rounds = [out]
            if args.second_round:
                rounds.append(run_load(srv.url, item_ids, args.requests, args.seconds, args.concurrency,
                                       args.upload_limit))
            rss_after2 = vm_rss_mb()
    res = summarise(out["records"], out["wall_s"])
    res["transport_errors"] = out["transport_errors"][:5]
    res["second_round_errors"] = (summarise(rounds[1]["records"], rounds[1]["wall_s"])["errors"]
                                  if len(rounds) > 1 else None)
    res.update(rss_mb={"before": rss_before, "after": rss_after, "after2": rss_after2},
               loadavg=(load0, os.getloadavg()[0]), date=time.strftime("%Y-%m-%d %H:%M"),
               index_items=len(index), index_desc=desc, model=model, concurrency=args.concurrency,
               limit_requests=args.requests, limit_seconds=args.seconds, upload_limit=args.upload_limit)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", help="an existing index directory (default: build a small synthetic one)")
    p.add_argument("--model", default="priorclip-closed-small", help="model for the built index")
    p.add_argument("--n-per-class", type=int, default=20, help="synthetic images per class (10 classes)")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--requests", type=int, default=300, help="stop after this many requests")
    p.add_argument("--seconds", type=float, default=60, help="or after this many seconds")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    p.add_argument("--upload-limit", type=int, default=UPLOAD_LIMIT, help="server's max upload bytes")
    p.add_argument("--no-second-round", dest="second_round", action="store_false",
                   help="skip the second round used to check memory stays flat")
    p.add_argument("--markdown", action="store_true", help=f"write the '{SECTION}' section of --results")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"))
    p.add_argument("--json", help="also write the summary as JSON here")
    args = p.parse_args(argv)

    res = run(args)
    mem = res["rss_mb"]
    print(f"{res['requests']} requests in {res['wall_s']} s: {res['requests_per_s']} requests/s, "
          f"{res['errors']} errors, concurrency {args.concurrency}, {res['index_items']} items")
    print(table(res))
    print(f"VmRSS: {mem['before']:.1f} MB before, {mem['after']:.1f} MB after, {mem['after2']:.1f} MB after round 2")
    for line in res["transport_errors"]:
        print("transport error:", line)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    if args.markdown:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results_md import write_sections

        write_sections(Path(args.results), {SECTION: markdown(res)}, "benchmarks/load_test.py --markdown")
        print(f"wrote section '{SECTION}' of {args.results}")
    return 1 if res["errors"] or res["second_round_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
