"""`priorclip serve`: the search API and web page for one index."""
from __future__ import annotations

HELP = "serve an index: HTTP API and a search page (offline)"
DESCRIPTION = """\
Start the search server for an index built by `priorclip index`: a web page at /, the JSON API
under /api (reference at /docs, schema at /openapi.json). Everything is served locally; no
external resources are loaded.

examples:
  priorclip serve idx/                       # http://127.0.0.1:8000/
  priorclip serve idx/ --port 8080 --max-upload-mb 10
"""


def add_arguments(p) -> None:
    p.add_argument("index", metavar="INDEX", help="index directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest accepted query image (default 20)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--backend-uri", default=None, metavar="URI",
                   help="a Milvus-backed index: reach its engine at this URI instead of the one recorded at index time")


def run(args) -> int:
    import sys

    import uvicorn

    from priorclip.cli.model_args import warn_random_index
    from priorclip.search.query import SearchIndex
    from priorclip.search.server import create_app

    idx = SearchIndex(args.index, device=args.device, backend_uri=args.backend_uri)
    warn_random_index("serve", idx)
    idx.encoder  # load the model now: a wrong checkpoint fails here, not on the first query
    app = create_app(idx, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"priorclip serve: listening on {args.host}: reachable from other machines", file=sys.stderr)
    print(f"priorclip serve: {len(idx)} items at http://{args.host}:{args.port}/ (API reference /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
