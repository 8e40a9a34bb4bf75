"""The playground in a real headless Chromium against a live `tianci serve` (tianci.serve.app + static/)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from server_fixtures import build_world, open_world_cipu, start_server, stop_server  # noqa: E402

CHROMIUM = os.environ.get("TIANCI_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)),
                                 reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                                        "TIANCI_CHROMIUM)")]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from tianci.serve.app import create_app

    world = build_world(tmp_path_factory.mktemp("browser-world"))
    server, thread, url = start_server(create_app(world["run"], cipu=open_world_cipu(world)))
    yield url
    stop_server(server, thread)


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        yield pg
        browser.close()


def test_compose_in_browser(live, page):
    """Guards: a page that cannot pick a 词牌, stream a poem, or lays it out in the wrong form."""
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live + "/")
    page.wait_for_selector("#cipai-list li[data-name]")
    page.fill("#cipai-search", "rml")  # search by pinyin abbreviation
    items = page.locator("#cipai-list li[data-name]")
    assert items.count() == 1
    items.first.click()
    page.wait_for_selector("#form-view .hd:has-text('如梦令')")  # selectors, not JS: the page's CSP forbids eval
    slots = page.locator("#form-view div:not(.hd)").all_inner_texts()
    assert len(slots) == 6 and all(set(s) & set("○●◐") for s in slots)
    page.click("#compose-btn")
    page.wait_for_selector("#poem[data-state=done], #poem[data-state=error]", timeout=60_000)
    assert page.get_attribute("#poem", "data-state") == "done", page.inner_text("#status")
    lines = page.locator("#poem .line")
    assert lines.count() == 6
    lengths = [lines.nth(i).locator(".cell.slot.filled").count() for i in range(6)]
    assert lengths == [6, 6, 11, 2, 2, 6]
    assert page.locator("#poem .cell.slot:not(.filled)").count() == 0
    assert page.inner_text("#poem .poem-author").strip()
    assert not page.is_disabled("#copy-btn") and not page.is_disabled("#regen-btn")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    # free continuation streams into the output pane
    page.click("#tab-free")
    page.fill("#prompt", "春风")
    page.click("#continue-btn")
    page.wait_for_selector("#free-out[data-state=done]", timeout=60_000)
    assert len(page.inner_text("#free-out .written")) > 0
    assert not errors, errors


def test_theme_field_reaches_the_composer(live, page):
    """Guards: the playground had no theme field, so `theme` (API and CLI) was out of a browser user's reach;
    the request must carry it and the page must say how many theme words the poem holds."""
    page.goto(live + "/")
    page.wait_for_selector("#cipai-list li[data-name]")
    page.fill("#cipai-search", "rml")
    page.locator("#cipai-list li[data-name]").first.click()
    page.wait_for_selector("#form-view .hd:has-text('如梦令')")
    page.fill("#theme", "春风")
    with page.expect_request(lambda r: r.url.endswith("/api/compose")) as sent:
        page.click("#compose-btn")
    assert json.loads(sent.value.post_data)["theme"] == "春风"
    page.wait_for_selector("#poem[data-state=done], #poem[data-state=error]", timeout=60_000)
    assert page.get_attribute("#poem", "data-state") == "done", page.inner_text("#status")
    meta = page.inner_text("#poem .poem-meta")
    assert re.search(r"主题 [01]/1", meta), meta
