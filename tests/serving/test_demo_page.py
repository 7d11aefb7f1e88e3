"""The demo page (/demo) and the API docs page (/) in headless Chromium, against a real ``bentoml serve``.

The browser is Debian's ``chromium`` (.ci/run installs it), driven by Playwright without a browser download.
Every test's page records its console messages and every request it makes; the ``page`` fixture asserts after
each test that the console stayed clean and that no request left the service. Screenshots of the demo at 1280
and 390 px go to ``$RNNTEXT_ARTIFACTS`` (default ``results/demo-page/``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from serving_helpers import Server, client, generated_text, server, sse_events  # noqa: F401 (fixtures)

from loadtests.soak import gauge
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# no background traffic: this machine's network is closed, and the tests assert that nothing leaves the service
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# a long stream, so that Stop and closing the tab land mid-stream on any machine; the page reads this bound
SERVER_ENV = {"RNNTEXT_MAX_CHARS": "20000"}
ARTIFACTS = Path(os.environ.get("RNNTEXT_ARTIFACTS", ROOT / "results" / "demo-page"))
SPORT = (
    "The home side won the cup final 2-1 after extra time. Their captain headed the winner in the 112th "
    "minute, and the goalkeeper saved a penalty before the break. The manager said the squad had shown "
    "great character all season, and the striker, who scored the first goal, was named man of the match."
)
PROMPT = "Holmes looked at me and said, "
LOADED = "document.querySelector('#models table') !== null"  # /info has been rendered
FINISHED = "document.querySelector('#generate-button').disabled === false"
EXPECTED_4XX = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        reason = "no chromium binary: apt-get install chromium (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI must run these, not skip them
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def until(page, expr: str, timeout_s: float = 60.0) -> None:
    """Waits until the JavaScript expression is true. Playwright's wait_for_function evaluates its predicate with
    eval() inside the page, which the pages' Content-Security-Policy (no 'unsafe-eval') refuses; evaluate() goes
    through the DevTools protocol, which the policy does not apply to, so the page runs under its real policy."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"() => Boolean({expr})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout_s:g} s: {expr}")
        time.sleep(0.02)


class Watched:
    """A page with its console messages and requests recorded."""

    def __init__(self, browser, base_url: str, width: int = 1280, height: int = 900):
        self.base = base_url
        self.context = browser.new_context(viewport={"width": width, "height": height}, base_url=base_url)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.console.append(m.text))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.context.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: str = "/demo"):
        self.page.goto(path)
        until(self.page, LOADED)
        return self.page

    def check(self, allowed_statuses: tuple[int, ...] = ()) -> None:
        """Nothing left the service; the console holds only the 4xx a test provoked on purpose."""
        outside = [u for u in self.requests if not u.startswith(self.base)]
        assert outside == []
        unexpected = [
            m for m in self.console if not ((g := EXPECTED_4XX.search(m)) and int(g.group(1)) in allowed_statuses)
        ]
        assert unexpected == []

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser, server):
    w = Watched(browser, server.url)
    yield w
    w.close()


def active_streams(server) -> float:
    return gauge(httpx.get(f"{server.url}/metrics", timeout=30).text, "rnntext_active_streams")


def wait_streams_zero(server, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while (n := active_streams(server)) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def api_greedy(client, prompt: str, n: int) -> str:
    r = client.post("/generate", json={"prompt": prompt, "max_chars": n, "temperature": 0})
    assert r.status_code == 200, r.text
    return generated_text(sse_events(r))


def set_generation(page, prompt: str, temperature: str, max_chars: int) -> None:
    page.get_by_test_id("generate-prompt").fill(prompt)
    page.get_by_test_id("generate-temperature").fill(temperature)
    page.get_by_test_id("generate-max-chars").fill(str(max_chars))


def record_growth(page) -> None:
    """Record the output's length after every change, inside the page (polling from here would miss steps)."""
    page.evaluate("""() => { window.lengths = [];
        new MutationObserver(() => window.lengths.push(document.querySelector('[data-testid=generate-output]')
            .textContent.length)).observe(document.querySelector('[data-testid=generate-output]'),
            {childList: true, characterData: true, subtree: true}); }""")


def output(page) -> str:
    return page.get_by_test_id("generate-output").text_content()


# --- classify ------------------------------------------------------------------------------------------------


def test_classify_a_sport_article_shows_sorted_bars_that_sum_to_one(watched):
    page = watched.open()
    page.get_by_test_id("classify-input").fill(SPORT)
    page.get_by_test_id("classify-button").click()
    bars = page.get_by_test_id("classify-result").locator("[data-label]")
    bars.first.wait_for()
    labels = [bars.nth(i).get_attribute("data-label") for i in range(bars.count())]
    probs = [float(bars.nth(i).get_attribute("data-prob")) for i in range(bars.count())]
    assert sorted(labels) == ["business", "entertainment", "politics", "sport", "tech"]
    assert labels[0] == "sport" and probs[0] > 0.5
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert all(0 <= p <= 1 for p in probs)
    assert re.fullmatch(r"\d+\.\d%", bars.first.locator(".pct").text_content())
    assert re.search(r"sport · \d+\.\d ms round trip", page.locator("#classify-meta").text_content())
    assert page.get_by_test_id("error").is_hidden()
    watched.check()


def test_an_empty_text_shows_the_services_error_and_the_page_keeps_working(watched):
    page = watched.open()
    page.get_by_test_id("classify-input").fill("")
    page.get_by_test_id("classify-button").click()
    error = page.get_by_test_id("error")
    error.wait_for(state="visible")
    assert "texts[0]: String should have at least 1 character (400, invalid_request)" in error.text_content()
    page.get_by_test_id("classify-input").fill("x" * 20_001)  # over max_text_chars: maxLength cuts it
    assert len(page.get_by_test_id("classify-input").input_value()) == 20_000
    page.get_by_test_id("classify-input").fill(SPORT)
    page.get_by_test_id("classify-button").click()
    error.wait_for(state="hidden")
    assert page.get_by_test_id("classify-result").locator("[data-label]").first.get_attribute("data-label") == "sport"
    watched.check(allowed_statuses=(400,))


# --- generate ------------------------------------------------------------------------------------------------


def test_greedy_generation_equals_the_api_and_streams_in_several_steps(watched, client):
    n = 2000
    expected = api_greedy(client, PROMPT, n)
    page = watched.open()
    set_generation(page, PROMPT, "0", n)
    record_growth(page)
    page.get_by_test_id("generate-button").click()
    until(page, FINISHED)
    assert output(page) == expected
    lengths = page.evaluate("window.lengths")
    assert len(set(lengths)) >= 3 and lengths == sorted(lengths) and lengths[-1] == n
    assert re.search(r"2000 chars · \d+ chars/s · done", page.locator("#generate-meta").text_content())
    assert page.get_by_test_id("generate-continue").is_enabled()
    watched.check()


def test_continue_gives_exactly_the_greedy_continuation(watched, client):
    expected = api_greedy(client, PROMPT, 600)
    page = watched.open()
    set_generation(page, PROMPT, "0", 300)
    page.get_by_test_id("generate-button").click()
    until(page, FINISHED)
    assert output(page) == expected[:300]
    page.get_by_test_id("generate-continue").click()
    until(page, FINISHED + " && document.querySelector('#generate-meta').textContent.includes('done')")
    assert output(page) == expected
    page.get_by_test_id("generate-continue").click()  # and again: the session moved on
    until(page, "document.querySelector('[data-testid=generate-output]').textContent.length === 900")
    assert output(page)[:600] == expected
    watched.check()


def test_stop_freezes_the_output_and_frees_the_stream_slot(watched, server):
    page = watched.open()
    assert page.get_by_test_id("generate-max-chars").get_attribute("max") == "20000"  # the service's bound
    start_long_stream(page)
    page.get_by_test_id("generate-stop").click()
    until(page, FINISHED)
    stopped = output(page)
    page.wait_for_timeout(1000)
    assert output(page) == stopped and 0 < len(stopped) < 20_000
    n = stopped_after(page)
    assert n == len(stopped)  # the done event's count is what the page shows
    assert page.get_by_test_id("generate-continue").is_enabled()  # a graceful stop saved the session there
    assert wait_streams_zero(server) == 0
    watched.check()


def test_stop_then_continue_gives_exactly_the_greedy_text(watched, client, server):
    """Stop mid-stream (POST /stop: the service ends the stream at a character and saves the session there), then
    Continue for the rest: the page's text is exactly one greedy generation of the same total length."""
    total_max, rest = 20_000, 300
    page = watched.open()
    start_long_stream(page, temperature="0", max_chars=total_max)
    page.get_by_test_id("generate-stop").click()
    until(page, FINISHED)
    n = stopped_after(page)
    assert 0 < n < total_max
    first = output(page)
    assert len(first) == n
    assert page.get_by_test_id("generate-continue").is_enabled()
    assert "kept: Continue goes on from here" in page.locator("#generate-session").text_content()
    assert wait_streams_zero(server) == 0
    page.get_by_test_id("generate-max-chars").fill(str(rest))  # Continue sends the page's max characters
    page.get_by_test_id("generate-continue").click()
    until(page, FINISHED + " && document.querySelector('#generate-meta').dataset.finishReason === 'length'")
    assert re.search(rf"{rest} chars · \d+ chars/s · done", page.locator("#generate-meta").text_content())
    expected = api_greedy(client, PROMPT, n + rest)
    assert output(page)[:n] == first
    assert output(page) == expected
    assert page.get_by_test_id("generate-continue").is_enabled()
    watched.check()


def test_when_stop_is_refused_the_page_closes_the_stream_and_turns_continue_off(watched, server):
    """The fallback: /stop fails (here a 500 put in by the browser), so the page aborts the fetch as before the
    graceful stop existed. The service frees the slot and the session was not advanced: Continue is off."""
    page = watched.open()
    page.route(
        "**/stop",
        lambda route: route.fulfill(
            status=500, content_type="application/json", body='{"error": "injected", "kind": "internal"}'
        ),
    )
    start_long_stream(page)
    page.get_by_test_id("generate-stop").click()
    until(page, FINISHED)
    stopped = output(page)
    page.wait_for_timeout(1000)
    assert output(page) == stopped and 0 < len(stopped) < 20_000
    assert "stopped (not saved)" in page.locator("#generate-meta").text_content()
    assert page.evaluate("document.querySelector('#generate-meta').dataset.finishReason") == "aborted"
    assert page.get_by_test_id("generate-continue").is_disabled()
    assert wait_streams_zero(server) == 0
    watched.check(allowed_statuses=(500,))


def start_long_stream(page, temperature: str = "0.8", max_chars: int = 20_000) -> None:
    set_generation(page, PROMPT, temperature, max_chars)
    page.get_by_test_id("generate-button").click()
    until(page, "document.querySelector('[data-testid=generate-output]').textContent.length > 0")


def stopped_after(page) -> int:
    """N from the status line "... · stopped after N characters" (the done event's finish_reason "stopped")."""
    meta = page.locator("#generate-meta").text_content()
    m = re.search(r"stopped after (\d+) characters?$", meta)
    assert m, meta
    assert page.evaluate("document.querySelector('#generate-meta').dataset.finishReason") == "stopped"
    return int(m.group(1))


def test_reloading_or_closing_the_tab_mid_stream_frees_the_stream_slot(browser, server):
    w = Watched(browser, server.url)
    page = w.open()
    start_long_stream(page)
    assert active_streams(server) >= 1
    page.reload()
    until(page, LOADED)
    assert wait_streams_zero(server) == 0
    start_long_stream(page)
    assert active_streams(server) >= 1
    page.close()
    w.close()
    assert wait_streams_zero(server) == 0


# --- models, layout, accessibility ---------------------------------------------------------------------------


def test_models_panel_shows_what_info_says(watched, client):
    info = client.get("/info").json()
    page = watched.open()
    text = page.locator("#models").text_content()
    cls = info["models"]["classifier"]
    assert f"{cls['metrics']['test_accuracy']:.4f}" in text
    cv = cls["cv"]  # the figures that rank models come first, the test split's are labelled secondary
    assert f"{cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f}" in text
    assert f"{cv['svm_accuracy_mean']:.4f} ± {cv['svm_accuracy_std']:.4f}" in text
    assert f"{cls['calibration']['cv_ece']:.4f} out-of-fold" in text and "(secondary)" in text
    assert text.index("fold CV accuracy") < text.index("test split accuracy (secondary)")
    assert f"{info['models']['generator']['metrics']['val_bits_per_char']:.4f}" in text
    assert info["precision"]["classifier"] in text and info["providers"]["generator"][0] in text
    assert "20,000" in text  # characters per generation, as this server is configured
    watched.check()


@pytest.mark.parametrize("width,height", [(1280, 900), (390, 844)])
def test_layout_fits_the_width_and_is_screenshotted(browser, server, width, height):
    w = Watched(browser, server.url, width, height)
    page = w.open()
    page.get_by_test_id("classify-button").click()
    page.get_by_test_id("classify-result").locator("[data-label]").first.wait_for()
    set_generation(page, "To Sherlock Holmes she is always ", "0.6", 400)
    page.get_by_test_id("generate-seed").fill("7")
    page.get_by_test_id("generate-button").click()
    until(page, FINISHED)
    assert len(output(page)) == 400
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"demo-{width}.png"), full_page=True)
    w.check()
    w.close()


CONTRAST_JS = """() => {
  const rgb = (s) => (s.match(/[\\d.]+/g) || []).map(Number);
  const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => { const f = lin;
                               return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const bg = (el) => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
                       if (c.length === 3 || c[3] > 0) return c.slice(0, 3); } return [255, 255, 255]; };
  const out = [];
  for (const el of document.querySelectorAll('h1, h2, h3, p, label, button, a, th, td, span, textarea, input')) {
    if (!el.offsetParent || !el.textContent.trim() && !el.value) continue;
    const a = lum(rgb(getComputedStyle(el).color)), b = lum(bg(el));
    out.push([el.tagName + (el.id ? '#' + el.id : ''), (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
  }
  return out;
}"""


def test_controls_have_labels_keyboard_access_and_aa_contrast(watched):
    page = watched.open()
    page.get_by_test_id("classify-button").click()
    page.get_by_test_id("classify-result").locator("[data-label]").first.wait_for()
    unlabeled = page.evaluate("""() => [...document.querySelectorAll('input, textarea, button')]
        .filter(e => e.offsetParent && !((e.labels && e.labels.length) || e.getAttribute('aria-label')
                                        || e.textContent.trim()))
        .map(e => e.id || e.outerHTML.slice(0, 60))""")
    assert unlabeled == []
    ratios = page.evaluate(CONTRAST_JS)
    assert len(ratios) > 40
    assert [(name, round(r, 2)) for name, r in ratios if r < 4.5] == []
    # the keyboard alone: Tab reaches the Classify button, Enter presses it
    page.get_by_test_id("classify-input").fill(SPORT)
    page.get_by_test_id("classify-result").evaluate("e => e.replaceChildren()")
    page.get_by_test_id("classify-input").focus()
    for _ in range(3):
        if page.evaluate("document.activeElement.dataset.testid") == "classify-button":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.testid") == "classify-button"
    page.keyboard.press("Enter")
    page.get_by_test_id("classify-result").locator("[data-label]").first.wait_for()
    watched.check()


# --- the API docs page ---------------------------------------------------------------------------------------


def test_the_api_docs_page_describes_this_service_and_loads_nothing_from_outside(watched, client):
    spec = client.get("/docs.json").json()
    assert spec["info"]["title"] == "rnntext: BBC News topics and Sherlock Holmes text"
    assert spec["info"]["version"] == "0.1.0" and "contact" not in spec["info"]
    assert "[the demo page](/demo)" in spec["info"]["description"] and "BentoML" not in spec["info"]["description"]
    assert {"/classify", "/generate", "/stop", "/end_session", "/info"} <= set(spec["paths"])
    page = watched.page
    page.goto("/")
    page.get_by_text("Try it in a browser").wait_for()
    page.locator("#swagger-ui .opblock").first.wait_for()
    assert page.title() == "rnntext API"
    # every operation of the OpenAPI 3.1 document is rendered (Swagger UI 5 reads 3.1; a console error fails check())
    # (how many operations there are is tests/serving/test_openapi.py's business: here, that all of them render)
    operations = sum(len(item) for item in spec["paths"].values())
    assert operations >= 11
    assert page.locator("#swagger-ui .opblock").count() == operations
    page.get_by_role("link", name="Try it in the demo page").click()
    until(page, LOADED)
    watched.check()


# --- with an API key -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server():
    srv = Server(env={"RNNTEXT_API_KEY": "demo-secret", "RNNTEXT_WORKERS": "1", **SERVER_ENV})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(browser, keyed_server):
    base = keyed_server.url
    assert httpx.get(f"{base}/demo").status_code == 200  # the pages need no key...
    assert httpx.get(f"{base}/").status_code == 200
    assert httpx.post(f"{base}/classify", json={"texts": [SPORT]}).status_code == 401  # ...the API does
    w = Watched(browser, base)
    page = w.page
    page.goto("/demo")
    page.get_by_test_id("api-key").wait_for(state="visible")
    error = page.get_by_test_id("error")
    error.wait_for(state="visible")
    assert "missing or wrong API key" in error.text_content()
    page.get_by_test_id("api-key").fill("wrong")
    page.get_by_role("button", name="Use key").click()
    page.get_by_test_id("classify-button").click()
    until(page, "document.querySelector('#error-title').textContent === 'Classify failed'")
    assert "missing or wrong API key" in error.text_content() and "(401, unauthorized)" in error.text_content()
    page.get_by_test_id("api-key").fill("demo-secret")
    page.get_by_role("button", name="Use key").click()
    until(page, LOADED)
    assert page.evaluate("sessionStorage.getItem('rnntext-api-key')") == "demo-secret"
    page.get_by_test_id("classify-button").click()
    page.get_by_test_id("classify-result").locator("[data-label]").first.wait_for()
    assert error.is_hidden()
    # Stop sends the key too: a refused /stop would fall back to closing the stream and turn Continue off
    start_long_stream(page)
    page.get_by_test_id("generate-stop").click()
    until(page, FINISHED)
    assert 0 < stopped_after(page) < 20_000
    assert page.get_by_test_id("generate-continue").is_enabled()
    assert error.is_hidden()
    w.check(allowed_statuses=(401,))
    w.close()


# --- the files themselves ------------------------------------------------------------------------------------


def test_the_page_files_reference_nothing_outside_the_service():
    web = ROOT / "serving" / "web"
    for f in web.iterdir():
        text = f.read_text()
        assert not re.search(r"(src|href|url)\s*[=(:]\s*[\"']?(https?:)?//", text), f.name
        assert "@import" not in text and "fonts.googleapis" not in text
