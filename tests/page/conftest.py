"""Browser fixtures: Debian's chromium driven by playwright, and the real server on loopback.

Without chromium (or playwright) the page tests skip with the reason; with ``CI`` set they
fail instead, so CI cannot pass by skipping them. Nothing here downloads a browser.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from page_harness import Tab, open_tab

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"page tests need a browser in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless system chromium (``/usr/bin/chromium`` or whatever ``chromium`` is on PATH).

    Module-scoped on purpose: playwright's sync API keeps an asyncio loop running in this
    thread while it is open, and async tests run later in the session need it closed.
    """
    path = shutil.which("chromium")
    if path is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -c constraints.txt playwright)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The default models served from a thread on 127.0.0.1; the base URL."""
    from helpers.live_server import live_server

    with live_server() as url:
        yield url


@pytest.fixture
def tab(browser: Any, server: str) -> Iterator[Tab]:
    """A tab on the module's server."""
    yield from open_tab(browser, server)
