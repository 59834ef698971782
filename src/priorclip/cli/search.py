"""`priorclip search`: query an index by text or by example image."""
from __future__ import annotations

HELP = "search an index by text or example image (table, JSON or GeoJSON)"
DESCRIPTION = """\
Rank the items of an index built by `priorclip index` against a text query or an example image.
The index's own model is loaded (recorded in INDEX/index.json).

examples:
  priorclip search idx/ "many planes parked near the terminal" -k 20
  priorclip search idx/ --image query.jpg -k 10 --json
  priorclip search idx/ "a stadium" --geojson > stadiums.geojson     # open in QGIS
  priorclip search idx/ "an airport" --bbox 12.2,41.7,12.7,42.0        # only tiles meeting this lon/lat box
"""


def add_arguments(p) -> None:
    p.add_argument("index", metavar="INDEX", help="index directory")
    p.add_argument("text", nargs="?", help="query text")
    p.add_argument("--image", metavar="FILE", help="search with an example image instead of text")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--bbox", metavar="MINLON,MINLAT,MAXLON,MAXLAT", default=None,
                   help="only items whose footprint meets this lon/lat box (EPSG:4326 degrees; minlon > maxlon "
                        "crosses the antimeridian; write --bbox=-10,... when it starts with a minus); photos "
                        "without georeference are left out")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print results as JSON")
    fmt.add_argument("--geojson", action="store_true",
                     help="print a GeoJSON FeatureCollection (tile footprints in lon/lat; null geometry otherwise)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--backend-uri", default=None, metavar="URI",
                   help="a Milvus-backed index: reach its engine at this URI instead of the one recorded at index time")


def run(args) -> int:
    import json

    from priorclip.cli.model_args import warn_random_index
    from priorclip.errors import ConfigError
    from priorclip.search.query import MAX_K, SearchIndex, format_table, to_geojson

    if (args.text is None) == (args.image is None):
        raise ConfigError("give either query TEXT or --image FILE (exactly one)")
    if not 1 <= args.k <= MAX_K:
        raise ConfigError(f"-k {args.k}: must be between 1 and {MAX_K}")
    from priorclip.search.spatial import BBox

    box = BBox.parse(args.bbox)  # a bad box fails before the model loads
    idx = SearchIndex(args.index, device=args.device, backend_uri=args.backend_uri)
    warn_random_index("search", idx)
    if args.image is not None:
        hits = idx.search_image(args.image, args.k, bbox=box)
        query = {"image": args.image, "k": args.k}
    else:
        hits = idx.search_text(args.text, args.k, bbox=box)
        query = {"text": args.text, "k": args.k}
    if box is not None:
        query["bbox"] = box.as_list()
    if args.geojson:
        print(json.dumps(to_geojson(hits, query), indent=1))
    elif args.json:
        print(json.dumps({"query": query, "results": hits}, indent=1))
    else:
        print(format_table(hits))
    return 0
