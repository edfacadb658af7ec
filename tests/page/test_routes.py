"""The page's routes without a browser: ``/``, ``/static/...`` and the model card route."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.live_server import MODELS_DIR, live_server

from service.page import EXAMPLE_ROWS, STATIC_DIR

# Plain threads and a sync client: these tests share the session with playwright's sync API.


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """toy1d as it is, and a copy 'rough' whose card files are broken or missing."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(MODELS_DIR / "toy1d", root / "toy1d")
    rough = root / "rough"
    shutil.copytree(MODELS_DIR / "toy1d", rough)
    toml = (rough / "model.toml").read_text(encoding="utf-8")
    (rough / "model.toml").write_text(toml.replace('name = "toy1d"', 'name = "rough"'))
    (rough / "README.md").unlink()
    (rough / "metrics.json").write_text("{not json")
    rows = ["x,y", "1.5,nan", "abc,2", "1,2,3"] + [f"{i},{i}" for i in range(EXAMPLE_ROWS + 9)]
    (rough / "test.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def client(repo: Path) -> Iterator[httpx.Client]:
    with live_server(models_dir=repo) as url, httpx.Client(base_url=url) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(repo: Path) -> Iterator[httpx.Client]:
    with live_server(api_key="k3y", models_dir=repo) as url, httpx.Client(base_url=url) as c:
        yield c


def test_index_and_every_file_it_names_are_served_with_the_policy(
    client: httpx.Client,
) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    assert re.findall(r"https?://", r.text) == []
    names = {p.relative_to(STATIC_DIR).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert {"index.html", "style.css", "js/main.js"} <= names
    for name in sorted(names):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200, name
        assert asset.content == (STATIC_DIR / name).read_bytes()
        if name.endswith(".js"):
            assert asset.headers["content-type"].startswith("text/javascript")
            # ES modules import only siblings: no URL outside the server.
            imports = re.findall(r"""^import\s.*?from\s+["']([^"']+)""", asset.text, re.M)
            assert all(m.startswith("./") for m in imports), (name, imports)
            assert imports or name != "js/main.js"


@pytest.mark.parametrize(
    "path", ["/static/nope.js", "/static/../page.py", "/static/%2e%2e/page.py", "/static/"]
)
def test_unknown_static_files_are_404_json(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert "error" in r.json()


def test_card_of_a_complete_folder(client: httpx.Client) -> None:
    r = client.get("/v1/models/toy1d/card")
    assert r.status_code == 200
    card = r.json()
    assert card["readme"] == (MODELS_DIR / "toy1d" / "README.md").read_text(encoding="utf-8")
    assert card["metrics"]["tau_fitted_on_held_out"] == pytest.approx(129.619, rel=1e-4)
    ex = card["examples"]
    assert ex["columns"] == ["x", "y"]
    lines = (MODELS_DIR / "toy1d" / "test.csv").read_text().split()[1:]
    assert ex["rows"] == [[float(v) for v in line.split(",")] for line in lines][:EXAMPLE_ROWS]


def test_card_of_a_rough_folder_leaves_out_what_it_cannot_read(
    client: httpx.Client,
) -> None:
    card = (client.get("/v1/models/rough/card")).json()
    assert card["readme"] is None and card["metrics"] is None
    rows = card["examples"]["rows"]
    assert rows[:2] == [[1.5, "nan"], ["abc", 2.0]]  # non-finite stays text; ragged row dropped
    assert len(rows) == EXAMPLE_ROWS


def test_card_errors(client: httpx.Client, keyed: httpx.Client) -> None:
    r = client.get("/v1/models/missing/card")
    assert r.status_code == 404 and "no model named 'missing'" in r.json()["error"]
    r = keyed.get("/v1/models/toy1d/card")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = keyed.get("/v1/models/toy1d/card", headers={"Authorization": "Bearer k3y"})
    assert r.status_code == 200 and r.json()["examples"] is not None
    # The page itself loads without a key: it asks for one when the API does.
    assert keyed.get("/").status_code == 200
