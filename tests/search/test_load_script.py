"""benchmarks/load_test.py end to end with tiny settings: a real uvicorn on loopback, a real small
model, concurrent clients; every request must get its expected status and oversize uploads 413."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_test.py"


def _load_script():
    return load_script("benchmarks/load_test.py", "priorclip_load_test")


def test_load_script_tiny_run(tmp_path):
    mod = _load_script()
    out, results = tmp_path / "summary.json", tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\nkeep me\n")
    rc = mod.main(["--n-per-class", "2", "--requests", "30", "--concurrency", "4", "--seconds", "60",
                   "--no-second-round", "--json", str(out), "--markdown", "--results", str(results)])
    res = json.loads(out.read_text())
    assert rc == 0, res
    assert res["index_items"] == 20
    assert res["requests"] == 30 and res["errors"] == 0 and not res["transport_errors"]
    eps = res["endpoints"]
    assert set(eps) == {"text", "image", "thumbnail", "oversize"}
    assert eps["oversize"]["n"] >= 1 and eps["oversize"]["statuses"] == {"413": eps["oversize"]["n"]}
    for kind in ("text", "image", "thumbnail"):
        assert eps[kind]["statuses"] == {"200": eps[kind]["n"]}
    # refused by Content-Length, before the body is embedded: faster than any real image search
    assert eps["oversize"]["p50_ms"] < eps["image"]["p50_ms"]
    assert res["rss_mb"]["after"] > 0

    # the section is appended once, other sections kept, and replaced (not duplicated) on rewrite
    text = results.read_text()
    assert "keep me" in text and text.count(mod.SECTION) == 1 and "30 requests in" in text
    sys.path.insert(0, str(SCRIPT.parent))
    from results_md import write_sections

    write_sections(results, {mod.SECTION: "new body"}, "a test")
    text = results.read_text()
    assert text.count(mod.SECTION) == 1 and "new body" in text and "30 requests in" not in text and "keep me" in text
