"""The OpenAPI schema says what the server does: schemathesis generates requests from it (valid
and invalid) against the app on a small index and runs every check on each response (status
codes and media types declared, bodies match their schemas, invalid data rejected, no 5xx)."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra (scripts/setup.sh)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import CHECKS, load_all_checks, positive_data_acceptance  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from priorclip.search.index import build_index  # noqa: E402
from priorclip.search.query import SearchIndex  # noqa: E402
from priorclip.search.encoders import ModelEncoder  # noqa: E402
from priorclip.search.server import create_app  # noqa: E402

from search_support import STUB, StubModel, make_geotiff  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    """The app on an index of one georeferenced scene and one plain photo, as schemathesis sees it."""
    from PIL import Image

    root = tmp_path_factory.mktemp("openapi")
    archive = root / "archive"
    archive.mkdir()
    make_geotiff(archive / "scene.tif", 300, 200)
    Image.new("RGB", (64, 48), (120, 90, 60)).save(archive / "photo.jpg")
    encoder = ModelEncoder(StubModel())
    build_index([archive], root / "idx", encoder, model_spec=STUB, batch_size=8, progress=False, log=lambda *_: None)
    app = create_app(SearchIndex(root / "idx", encoder=encoder), max_upload_bytes=100_000)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


load_all_checks()
ALL_CHECKS = CHECKS.get_all()  # `--checks all`
WITHOUT_POSITIVE = [c for c in ALL_CHECKS if c is not positive_data_acceptance]


# schemathesis.pytest.from_fixture reads a pytest-internal attribute pytest 9 removed, so the
# operations are walked here with Hypothesis directly (the same cases and checks).
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_every_route_does_what_its_schema_says(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        definition = api_schema.raw_schema["paths"][operation.path][operation.method.lower()]
        if mode is GenerationMode.NEGATIVE and not (definition.get("parameters") or definition.get("requestBody")):
            continue  # nothing to make invalid (GET /api/health)
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call()
            checks = ALL_CHECKS
            if operation.path == "/api/search/image" and response.status_code == 400:
                # A body the schema accepts (any bytes) need not be a decodable image: that part
                # of "valid" no schema can state, so it is held to "400 with a JSON reason".
                checks = WITHOUT_POSITIVE
            if response.status_code == 400 and "minlat <= maxlat" in response.text:
                checks = WITHOUT_POSITIVE  # a box upside down: no schema compares two of its numbers
            case.validate_response(response, checks=checks)
            if checks is WITHOUT_POSITIVE:
                assert response.json()["detail"], response.text
        check()


def test_the_schema_declares_errors_and_media_types(api_schema):
    """The declarations the generated test relies on are really there (not an empty schema)."""
    raw = api_schema.raw_schema["paths"]
    assert set(raw) >= {"/api/health", "/api/search", "/api/search.geojson", "/api/search/image",
                        "/api/items/{item_id}", "/api/items/{item_id}/thumbnail", "/api/scenes/{scene_id}/overview"}
    assert "application/geo+json" in raw["/api/search.geojson"]["get"]["responses"]["200"]["content"]
    assert "image/jpeg" in raw["/api/items/{item_id}/thumbnail"]["get"]["responses"]["200"]["content"]
    assert {"403", "404", "410", "422", "500"} <= set(raw["/api/items/{item_id}/thumbnail"]["get"]["responses"])
    assert {"400", "413"} <= set(raw["/api/search/image"]["post"]["responses"])
    size = next(p for p in raw["/api/items/{item_id}/thumbnail"]["get"]["parameters"] if p["name"] == "size")
    assert size["schema"]["enum"] == [64, 128, 256, 512]
