"""The page in real headless chromium against the real server (issue 17).

Each test drives one view the way a person would (mouse, keyboard, form fields), records
every request the tab makes, and saves a screenshot of the view to ``docs/img/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers.tolerance import assert_close_f32
from page_harness import Tab, open_tab

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a real server and headless chromium

# Math.random made repeatable, so "a test digit" and "noise" pick the same inputs each run.
SEEDED_RANDOM = """
(() => {
  let a = 20261201;
  Math.random = () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
})();
"""


def settle(tab: Tab) -> None:
    """Wait until no prediction is in flight (main.js keeps the count on <body>)."""
    tab.page.wait_for_function("() => document.body.dataset.pending === '0'")


def predict_bodies(tab: Tab) -> list[dict[str, Any]]:
    return tab.page.evaluate("window.__bodies")


def record_predict_bodies(tab: Tab) -> None:
    """Keep the JSON body of every predict request the page sends (window.__bodies)."""
    tab.page.add_init_script(
        """
        window.__bodies = [];
        const send = window.fetch;
        window.fetch = (url, opts) => {
          if (String(url).endsWith('/predict')) window.__bodies.push(JSON.parse(opts.body));
          return send(url, opts);
        };
        """
    )


def test_page_loads_from_the_server_only(tab: Tab) -> None:
    response = tab.page.goto(f"{tab.base}/")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    tab.page.wait_for_selector("#models button[data-model='toy1d']")
    names = tab.page.eval_on_selector_all("#models button", "bs => bs.map(b => b.dataset.model)")
    assert {"concrete", "digits", "toy1d"} <= set(names)
    settle(tab)
    # Keyboard: Tab reaches the skip link first, and the model buttons are buttons.
    tab.page.keyboard.press("Tab")
    assert tab.page.evaluate("document.activeElement.className") == "skip"
    tab.page.focus("#models button[data-model='digits']")
    tab.page.keyboard.press("Enter")
    tab.page.wait_for_selector("#pad")
    settle(tab)
    assert tab.page.url.endswith("#digits")
    paths = {u.removeprefix(tab.base) for u in tab.requests}
    assert {"/", "/static/js/main.js", "/static/style.css", "/v1/models"} <= paths
    tab.assert_clean()


def band_path(tab: Tab) -> str:
    return tab.page.get_attribute("#band-mean", "d") or ""


def test_band_draws_and_follows_the_range(tab: Tab) -> None:
    record_predict_bodies(tab)
    tab.open("#toy1d")
    tab.page.wait_for_selector("#band-mean")
    settle(tab)
    first = band_path(tab)
    assert first.count("L") > 100  # one vertex per grid point
    assert tab.page.input_value("#range-from") == "-6" and tab.page.input_value("#range-to") == "6"
    xs = [row[0] for row in predict_bodies(tab)[-1]["inputs"]]
    assert xs[0] == -6 and xs[-1] == 6 and xs == sorted(xs)
    tab.shot("toy1d")

    # Typed range.
    tab.page.fill("#range-from", "-2")
    tab.page.fill("#range-to", "0.5")
    tab.page.dispatch_event("#range-to", "change")
    tab.page.wait_for_function(
        f"() => document.querySelector('#band-mean').getAttribute('d') !== {json.dumps(first)}"
    )
    settle(tab)
    xs = [row[0] for row in predict_bodies(tab)[-1]["inputs"]]
    assert (xs[0], xs[-1]) == (-2, 0.5)
    ticks = tab.page.eval_on_selector_all("#band text.tick.x", "ts => ts.map(t => t.textContent)")
    assert "-6" not in ticks and "0" in ticks

    # Keyboard: ArrowRight moves the range by a tenth of its width.
    typed = band_path(tab)
    tab.page.focus("#band")
    tab.page.keyboard.press("ArrowRight")
    settle(tab)
    assert float(tab.page.input_value("#range-from")) == pytest.approx(-1.75)
    assert band_path(tab) != typed

    # Drag: moving the pointer left moves the range right.
    before = float(tab.page.input_value("#range-from"))
    box = tab.page.locator("#band").bounding_box()
    y = box["y"] + box["height"] / 2
    tab.page.mouse.move(box["x"] + box["width"] * 0.7, y)
    tab.page.mouse.down()
    tab.page.mouse.move(box["x"] + box["width"] * 0.4, y, steps=5)
    tab.page.mouse.up()
    settle(tab)
    assert float(tab.page.input_value("#range-from")) > before + 0.5
    # Zoom out widens the range around its centre.
    lo, hi = (float(tab.page.input_value(s)) for s in ("#range-from", "#range-to"))
    tab.page.click("text=Zoom out")
    settle(tab)
    lo2, hi2 = (float(tab.page.input_value(s)) for s in ("#range-from", "#range-to"))
    assert hi2 - lo2 == pytest.approx(1.5 * (hi - lo), rel=1e-3)
    tab.assert_clean()


def test_band_widens_away_from_the_data(tab: Tab) -> None:
    """What is drawn is the API's answer: the epistemic band is wider outside the data."""
    tab.open("#toy1d")
    tab.page.wait_for_selector("#band-epistemic")
    settle(tab)
    # The data-range marks come from test.csv: two intervals near [-3, -1] and [1, 3].
    labels = tab.page.eval_on_selector_all("#band text.data-label", "ts => ts.length")
    assert labels == 2
    text = tab.page.text_content("#band-readout") or ""
    assert text.startswith("At x = ")
    # The readout starts where the epistemic sd is largest: outside the data.
    x = float(text.split("At x = ")[1].split(":")[0])
    assert abs(x) > 3
    tab.assert_clean()


def pad_state(tab: Tab) -> tuple[list[float], float]:
    probs = json.loads(tab.page.get_attribute("#probs", "data-probs") or "null")
    mi = float(tab.page.get_attribute("#class-stats", "data-mi") or "nan")
    return probs, mi


def stroke(tab: Tab, points: list[tuple[float, float]]) -> None:
    """Draw one stroke on the pad; points in [0, 1] of the pad's box."""
    box = tab.page.locator("#pad").bounding_box()
    at = [(box["x"] + u * box["width"], box["y"] + v * box["height"]) for u, v in points]
    tab.page.mouse.move(*at[0])
    tab.page.mouse.down()
    for p in at[1:]:
        tab.page.mouse.move(*p, steps=3)
    tab.page.mouse.up()


def test_pad_downsamples_like_the_data(tab: Tab) -> None:
    tab.open("#digits")
    tab.page.wait_for_selector("#pad")
    settle(tab)
    # A vertical stroke: centred on the bitmap's middle column boundary, so only block
    # columns 3 and 4 get ink, equally; every count is within 0..16; it spans all 8 rows.
    grid = tab.page.evaluate(
        """async () => {
          const { strokesToGrid } = await import('/static/js/pad.js');
          return strokesToGrid([[[128, 20], [128, 236]]]);
        }"""
    )
    assert len(grid) == 64 and all(0 <= v <= 16 and v == int(v) for v in grid)
    rows = [grid[r * 8 : r * 8 + 8] for r in range(8)]
    assert all(row == row[::-1] for row in rows)
    assert all(sum(row) > 0 for row in rows)
    assert all(v == 0 for i, v in enumerate(grid) if i % 8 not in (3, 4))
    # An L-shaped stroke fills whole 4x4 blocks somewhere along its 3.5-pixel pen.
    grid = tab.page.evaluate(
        """async () => (await import('/static/js/pad.js')).strokesToGrid(
             [[[60, 20], [60, 236], [200, 236]], [[62, 20], [62, 236], [200, 234]]])"""
    )
    assert max(grid) == 16 and sum(1 for v in grid if v) >= 8
    assert tab.page.evaluate(
        "async () => (await import('/static/js/pad.js')).strokesToGrid([]).every(v => v === 0)"
    )
    tab.assert_clean()


def test_strokes_change_probabilities_and_noise_raises_mi(browser: Any, server: str) -> None:
    for tab in open_tab(browser, server):
        tab.page.add_init_script(SEEDED_RANDOM)
        tab.open("#digits")
        tab.page.wait_for_selector("#mi")
        settle(tab)
        tab.page.click("#btn-clear")
        settle(tab)
        empty, _ = pad_state(tab)
        stroke(tab, [(0.5, 0.12), (0.5, 0.88)])  # a "1"
        settle(tab)
        one, _ = pad_state(tab)
        assert one != empty
        assert math.isclose(sum(one), 1.0, rel_tol=1e-5)
        assert max(range(10), key=one.__getitem__) == 1
        assert "your drawing" in (tab.page.text_content("#pad-source") or "")
        tab.page.click("#btn-clear")
        stroke(tab, [(0.25, 0.15), (0.75, 0.15), (0.45, 0.88)])  # a "7"
        stroke(tab, [(0.4, 0.5), (0.68, 0.5)])
        settle(tab)
        seven, _ = pad_state(tab)
        assert seven != one
        assert max(range(10), key=seven.__getitem__) == 7
        assert tab.page.text_content("#pad-source") == "Input: your drawing."
        tab.shot("digits-drawn")

        # Five test digits against five noise images (README: mean MI 0.05 vs 0.47 nats).
        test_mi, noise_mi = [], []
        for _ in range(5):
            tab.page.click("#btn-test")
            settle(tab)
            test_mi.append(pad_state(tab)[1])
            tab.page.click("#btn-noise")
            settle(tab)
            noise_mi.append(pad_state(tab)[1])
        assert min(test_mi + noise_mi) >= 0
        assert sum(noise_mi) / 5 > 2 * sum(test_mi) / 5, (test_mi, noise_mi)
        tab.shot("digits-noise")
        tab.page.click("#btn-test")
        settle(tab)
        tab.shot("digits")
        # Inverted: 16 - x of what is shown.
        tab.page.click("#btn-invert")
        settle(tab)
        assert "inverted" in (tab.page.text_content("#pad-source") or "")
        # Keyboard: the 8x8 preview takes arrows and Space.
        tab.page.focus("#pad-preview")
        tab.page.keyboard.press("ArrowUp")
        tab.page.keyboard.press("Space")
        settle(tab)
        assert "keyboard" in (tab.page.text_content("#pad-source") or "")
        tab.assert_clean()


def answer_values(tab: Tab, field: str) -> list[float]:
    return [
        float(v)
        for v in tab.page.eval_on_selector_all(
            f"#answer td[data-field='{field}']", "cs => cs.map(c => c.dataset.value)"
        )
    ]


CONCRETE_ROW = [540.0, 0.0, 0.0, 162.0, 2.5, 1040.0, 676.0, 28.0]


def test_third_model_form_round_trips(tab: Tab) -> None:
    record_predict_bodies(tab)
    tab.open("#concrete")
    tab.page.wait_for_selector("#field-7")
    settle(tab)
    labels = tab.page.eval_on_selector_all("#fields label span", "ss => ss.map(s => s.textContent)")
    assert labels[0] == "cement" and labels[7] == "age"
    tab.page.fill("#samples", "300")
    tab.page.fill("#seed", "7")
    for i, v in enumerate(CONCRETE_ROW):
        tab.page.fill(f"#field-{i}", str(v))
    tab.page.keyboard.press("Enter")  # submits the form
    settle(tab)
    sent = predict_bodies(tab)[-1]
    assert sent == {"inputs": [CONCRETE_ROW], "samples": 300, "seed": 7}
    direct = httpx.post(f"{tab.base}/v1/models/concrete/predict", json=sent).json()
    assert_close_f32(answer_values(tab, "mean"), direct["mean"][0])
    assert_close_f32(answer_values(tab, "std"), direct["std"][0])
    assert_close_f32(answer_values(tab, "stderr"), direct["stderr"][0])
    epi = [math.sqrt(v) for v in direct["epistemic_variance"][0]]
    assert_close_f32(answer_values(tab, "epistemic_sd"), epi)
    latency = tab.page.text_content("#latency") or ""
    assert "ms round trip" in latency and "seed 7" in latency and "S = 300" in latency
    tab.shot("concrete")

    # The JSON box takes several rows; each gets its own table.
    tab.page.click("#btn-json")
    tab.page.fill("#json-input", json.dumps([CONCRETE_ROW, [0.0] * 8]))
    tab.page.click("#btn-predict")
    settle(tab)
    assert predict_bodies(tab)[-1]["inputs"] == [CONCRETE_ROW, [0.0] * 8]
    assert tab.page.locator("#answer table.answer").count() == 2
    tab.assert_clean(http_errors=False)


def error_text(tab: Tab) -> str:
    tab.page.wait_for_selector("#error:not([hidden])")
    return tab.page.text_content("#error") or ""


def test_api_errors_are_shown(tab: Tab) -> None:
    tab.open("#concrete")
    tab.page.wait_for_selector("#field-0")
    settle(tab)
    tab.page.click("#btn-json")
    tab.page.fill("#json-input", "[[1, 2, 3]]")
    tab.page.click("#btn-predict")
    text = error_text(tab)
    assert "HTTP 422" in text and "expected rows of shape [8], got [3]" in text
    assert "Change the input" in text
    assert tab.page.locator("#answer.stale table.answer").count() == 1  # the old one, dimmed
    tab.page.fill("#json-input", "[[1, 2")
    tab.page.click("#btn-predict")
    tab.page.wait_for_function(
        "() => document.querySelector('#error').textContent.includes('valid JSON')"
    )
    tab.page.fill("#json-input", json.dumps([CONCRETE_ROW]))
    tab.page.fill("#samples", "20000")
    tab.page.dispatch_event("#samples", "change")
    tab.page.wait_for_function(
        "() => document.querySelector('#error').textContent.includes('HTTP 422')"
    )
    assert "samples" in error_text(tab)
    tab.shot("error")
    # A good request clears the message.
    tab.page.fill("#samples", "50")
    tab.page.dispatch_event("#samples", "change")
    tab.page.wait_for_selector("#error", state="hidden")
    settle(tab)
    assert tab.page.locator("#answer.stale").count() == 0
    # A model the server does not have: the API module's error carries the 404 message.
    tab.page.evaluate(
        "async () => { const { predict } = await import('/static/js/api.js');"
        " try { await predict('nope', [[1]]); }"
        " catch (e) { window.__err = [e.status, e.message]; } }"
    )
    status, message = tab.page.evaluate("window.__err")
    assert status == 404 and "no model named 'nope'" in message
    tab.assert_clean(http_errors=True)


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    from helpers.live_server import live_server

    with live_server(api_key="open-sesame") as url:
        yield url


def test_api_key_prompt(browser: Any, keyed_server: str) -> None:
    for tab in open_tab(browser, keyed_server):
        tab.open("#toy1d")
        tab.page.wait_for_selector("#key-dialog[open]")
        assert "asks for an API key" in (tab.page.text_content("#key-message") or "")
        tab.shot("key")
        tab.page.fill("#key-input", "wrong")
        tab.page.keyboard.press("Enter")
        tab.page.wait_for_function(
            "() => document.querySelector('#key-message').textContent.includes('refused')"
        )
        assert tab.page.is_visible("#key-dialog")
        tab.page.fill("#key-input", "open-sesame")
        tab.page.click("#key-ok")
        tab.page.wait_for_selector("#band-mean")
        settle(tab)
        assert tab.page.locator("#models button").count() >= 3
        # Memory only: not in storage, cookies or the address.
        stored = tab.page.evaluate(
            "() => JSON.stringify([{...localStorage}, {...sessionStorage},"
            " document.cookie, location.href])"
        )
        assert "open-sesame" not in stored
        tab.assert_clean(http_errors=True)
    # Cancelling the prompt leaves a clear 401 message.
    for tab in open_tab(browser, keyed_server):
        tab.open()
        tab.page.wait_for_selector("#key-dialog[open]")
        tab.page.click("#key-cancel")
        text = error_text(tab)
        assert "HTTP 401" in text and "API key" in text
        tab.assert_clean(http_errors=True)


def test_text_models_get_a_text_box(tab: Tab) -> None:
    """A model that takes raw text (``takes_text`` in its description) gets a text box whose
    lines are the rows of the request. No served model takes text yet, so the form is
    mounted here with such a description and a stand-in for the request."""
    tab.open("#concrete")
    tab.page.wait_for_selector("#field-0")
    settle(tab)
    sent = tab.page.evaluate(
        """async () => {
          const { mountForm } = await import('/static/js/form.js');
          const model = { name: 'langid', task: 'classification', input_shape: [32],
            input_dtype: 'int64', takes_text: true, output_names: ['en', 'es'],
            output_shape: [2], max_batch_rows: 8 };
          const calls = [];
          const answer = { mean: [[0.9, 0.1], [0.2, 0.8]], probs: [[0.9, 0.1], [0.2, 0.8]],
            std: [[0.1, 0.1], [0.2, 0.2]], predictive_entropy: [0.3, 0.5],
            expected_entropy: [0.2, 0.4], mutual_information: [0.1, 0.1],
            variation_ratio: [0.0, 0.1] };
          const ctx = { model, card: null, onParams() {}, error: (e) => calls.push(String(e)),
            predict: async (inputs) => { calls.push(inputs); return answer; } };
          const root = document.createElement('div');
          document.body.append(root);
          mountForm(root, ctx);
          const before = calls.length;
          root.querySelector('#text-input').value = 'where is the station\\n\\n¿dónde está?';
          root.querySelector('#btn-predict').click();
          await new Promise((r) => setTimeout(r, 50));
          return { before, calls, tables: root.querySelectorAll('table.answer').length };
        }"""
    )
    assert sent["before"] == 0  # an empty text box sends nothing
    assert sent["calls"] == [["where is the station", "¿dónde está?"]]
    assert sent["tables"] == 2
    tab.assert_clean()
