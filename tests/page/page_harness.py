"""The browser tab the page tests drive: request recording, the gate, screenshots."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
VIEWPORT = {"width": 1366, "height": 900}  # a laptop screen


@dataclass
class Tab:
    """A browser tab on the server, recording every request it makes and every JS error."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.base}/{fragment}")

    def assert_clean(self, http_errors: bool = False) -> None:
        """Nothing left the server, and the page raised no JavaScript error.

        With ``http_errors``, chromium's console line for a 4xx answer the test provoked
        ("Failed to load resource: the server responded with a status of ...") is allowed.
        """
        outside = [u for u in self.requests if not u.startswith(self.base + "/")]
        assert outside == [] and self.blocked == [], (outside, self.blocked)
        expected = "Failed to load resource: the server responded with a status of 4"
        errors = [e for e in self.errors if not (http_errors and e.startswith(expected))]
        assert errors == []

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"page-{name}.png"), full_page=True)


def open_tab(browser: Any, base: str) -> Iterator[Tab]:
    """A fresh browser context (no shared storage) whose tab may reach ``base`` only."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(20_000)
    tab = Tab(page, base)

    def gate(route: Any) -> None:
        # Anything not for the server is refused and recorded: the test sees it, the
        # network never does.
        if route.request.url.startswith(base + "/"):
            route.continue_()
        else:
            tab.blocked.append(route.request.url)
            route.abort()

    context.route("**/*", gate)
    page.on("request", lambda r: tab.requests.append(r.url))
    page.on("pageerror", lambda e: tab.errors.append(str(e)))
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    try:
        yield tab
    finally:
        context.close()
