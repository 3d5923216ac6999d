"""The web app in a real browser: Debian's Chromium driven by Playwright for Python.

Playwright's own browser download does not work here, so the tests use /usr/bin/chromium and
skip (saying how to install it) where it is missing. The app runs under uvicorn on a free
localhost port in a background thread. Set RISKSET_SCREENSHOTS=1 to refresh docs/*.png.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from riskset.web import create_app

from .conftest import JESSICA, ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The app under uvicorn, on a socket bound first so no other process can take the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the app did not start under uvicorn")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page_at(browser: Any) -> Iterator[Any]:
    """A factory of fresh pages at a given viewport, closed after the test."""
    contexts: list[Any] = []

    def make(viewport: dict[str, int] = PHONE, javascript: bool = True) -> Any:
        context = browser.new_context(viewport=viewport, java_script_enabled=javascript)
        # The page's content security policy would refuse the injected axe-core script.
        context.add_init_script(path=str(AXE))
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        return page

    yield make
    for context in contexts:
        context.close()


def assess_jessica(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/")
    page.get_by_label("What issue is being presented?").fill(JESSICA)
    page.get_by_role("button", name="Assess").first.click()
    # Wait for the result or for an error, so a failure shows at once and says what it was.
    page.wait_for_selector("#result-title, .notice-error")
    assert page.locator("#result-title").count() == 1, page.locator(".notice-error").inner_text()


def screenshot(page: Any, name: str, tmp_path: Path) -> None:
    """The page from the top to the end of the result (the form below it is left out)."""
    folder = ROOT / "docs" if os.environ.get("RISKSET_SCREENSHOTS") else tmp_path
    folder.mkdir(exist_ok=True)
    page.evaluate("document.activeElement.blur()")
    box = page.locator("#result").bounding_box()
    width = page.viewport_size["width"]
    clip = {"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"]}
    page.screenshot(path=str(folder / name), full_page=True, clip=clip)


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    results = page.evaluate("() => axe.run(document)")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def check_jessica_result(page: Any, width: int) -> None:
    result = page.locator("#result")
    text = result.inner_text()
    assert "Very high" in text
    assert "Loss of tolerance" in text and "Naloxone" in text
    assert page.locator("mark.hl-present", has_text="heroin").count() == 1
    assert page.locator(".tag", has_text="Heroin").count() == 1
    # Usable at this width: nothing sticks out sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize(
    ("viewport", "shot"), [(PHONE, "jessica-phone.png"), (DESKTOP, "jessica-desktop.png")]
)
def test_assess_jessica(
    page_at: Any, base_url: str, viewport: dict[str, int], shot: str, tmp_path: Path
) -> None:
    page = page_at(viewport)
    assess_jessica(page, base_url)
    check_jessica_result(page, viewport["width"])
    # htmx swapped the result in: the page did not reload, and focus moved to the result.
    assert page.url == f"{base_url}/"
    assert page.evaluate("document.activeElement.id") == "result-title"
    screenshot(page, shot, tmp_path)


def test_assess_without_javascript(page_at: Any, base_url: str) -> None:
    page = page_at(PHONE, javascript=False)
    assess_jessica(page, base_url)
    assert page.url == f"{base_url}/assess"
    check_jessica_result(page, PHONE["width"])
    assert page.locator("#text").input_value() == JESSICA


def test_tap_targets_are_large_on_a_phone(page_at: Any, base_url: str) -> None:
    page = page_at(PHONE)
    page.goto(f"{base_url}/")
    small = page.evaluate(
        """() => [...document.querySelectorAll('button, .choice, .nav-list a, .text-input')]
            .filter(e => e.getBoundingClientRect().height < 44).map(e => e.outerHTML)"""
    )
    assert small == []
    size = page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)")
    assert size >= 16


def test_handout_prints_on_one_page(page_at: Any, base_url: str, tmp_path: Path) -> None:
    page = page_at(DESKTOP)
    assess_jessica(page, base_url)
    page.get_by_role("button", name="Printable handout for the person").click()
    page.wait_for_selector("article.handout")
    assert page.get_by_role("heading", level=1).inner_text() == "Your plan"
    assert "Naloxone" in page.locator("article.handout").inner_text()
    assert page.get_by_role("button", name="Print").is_visible()
    page.emulate_media(media="print")
    assert not page.locator(".site-header").is_visible()
    assert not page.get_by_role("button", name="Print").is_visible()
    pdf = page.pdf(format="Letter")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1
    # And back again, with the same account.
    page.emulate_media(media="screen")
    page.get_by_role("button", name="Back to the assessment").click()
    page.wait_for_selector("#result-title")
    assert page.locator("#text").input_value() == JESSICA


def test_keyboard_only(page_at: Any, base_url: str) -> None:
    page = page_at(DESKTOP)
    page.goto(f"{base_url}/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to main content"
    page.keyboard.press("Enter")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "text":
            break
    assert page.evaluate("document.activeElement.id") == "text"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    page.keyboard.type(JESSICA)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Assess"
    page.keyboard.press("Enter")
    page.wait_for_selector("#result-title")
    assert page.evaluate("document.activeElement.id") == "result-title"
    assert "Naloxone" in page.locator("#result").inner_text()


def test_check_a_combination(page_at: Any, base_url: str) -> None:
    page = page_at(PHONE)
    page.goto(f"{base_url}/combinations")
    page.get_by_label("Which substances?").fill("fetty + bars")
    page.keyboard.press("Enter")
    page.wait_for_selector("#combo-title")
    assert "dangerous" in page.locator("#combo-title").inner_text()
    page.get_by_role("link", name="Benzodiazepines").first.click()
    assert page.get_by_role("heading", level=1).inner_text() == "Benzodiazepines"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def _visit(page: Any, base_url: str, where: str) -> None:
    if where == "result":
        assess_jessica(page, base_url)
    elif where == "handout":
        assess_jessica(page, base_url)
        page.get_by_role("button", name="Printable handout for the person").click()
        page.wait_for_selector("article.handout")
    elif where == "form error":
        page.goto(f"{base_url}/")
        page.get_by_role("button", name="Assess").first.click()
        page.wait_for_selector(".notice-error")
    else:
        page.goto(f"{base_url}{where}")
        if where == "/docs":
            # Open one operation too: its example body is where Swagger UI needed fixes.
            page.locator(".swagger-ui .opblock-summary-control").first.click()
            page.wait_for_selector(".swagger-ui .opblock-body .microlight")


@pytest.mark.parametrize(
    "where",
    [
        "/",
        "result",
        "handout",
        "form error",
        "/codes",
        "/combinations?names=fetty+%2B+bars%2C+lean",
        "/combinations?names=fetanyl",
        "/substances",
        "/substances/benzodiazepines",
        "/docs",
        "/no-such-page",
    ],
)
@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_axe_finds_nothing_serious(
    page_at: Any, base_url: str, where: str, viewport: dict[str, int]
) -> None:
    page = page_at(viewport)
    _visit(page, base_url, where)
    assert serious_violations(page) == []
