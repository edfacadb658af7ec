"""/docs and /redoc work offline, and the OpenAPI schema documents the API key."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from helpers.live_server import app_client
from svc_helpers import make_settings

pytestmark = pytest.mark.anyio

# Every URL a page makes the browser load: attributes (ReDoc: spec-url) and JS "url:" keys.
_URLS = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=\s*|\burl\s*:\s*)["']([^"']+)["']""")
_ABSOLUTE = re.compile(r"""(?:https?:)?//[^\s"'<>]+""")


@pytest.fixture(scope="module")
async def secured(tiny_repo: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings(tiny_repo, api_key="docs-key")) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_api_pages_load_only_local_assets(secured: httpx.AsyncClient, page: str) -> None:
    r = await secured.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert _ABSOLUTE.findall(r.text) == []  # no CDN: the page works without internet
    urls = _URLS.findall(r.text)
    assert "/openapi.json" in urls and any(u.endswith(".js") for u in urls), urls
    for url in urls:
        asset = await secured.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url  # the real file, not an error body


async def test_openapi_has_a_bearer_scheme_on_the_model_routes_when_a_key_is_set(
    secured: httpx.AsyncClient, tiny_repo: Path
) -> None:
    schema = (await secured.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "The server's MCDROP_API_KEY.",
    }  # fmt: skip
    paths = schema["paths"]
    for path in ("/v1/models", "/v1/models/{name}/predict", "/v2/models/{name}/infer"):
        for op in paths[path].values():
            assert op["security"] == [{"bearer": []}], path
    for path in ("/health/ready", "/v2/health/live", "/metrics"):
        assert all("security" not in op for op in paths[path].values()), path
    async with app_client(make_settings(tiny_repo)) as open_app:  # no key: nothing to send
        schema = (await open_app.get("/openapi.json")).json()
    assert "securitySchemes" not in schema.get("components", {})
    assert all("security" not in op for ops in schema["paths"].values() for op in ops.values())
