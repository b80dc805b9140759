"""Headless Chromium (Debian's, at /usr/bin/chromium, installed by `make test`) driven through playwright."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Page, sync_playwright

CHROMIUM = os.environ.get("MIGA_TEST_CHROMIUM", "/usr/bin/chromium")


@contextmanager
def chromium_page(width: int = 1200, height: int = 800) -> Iterator[Page]:
    """A fresh page; fails (never skips) when the browser is missing, and on any script error of the page."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `make test` (installs Debian's chromium) or set MIGA_TEST_CHROMIUM"
        )
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page
        finally:
            browser.close()
    assert not errors, f"script errors on the page: {errors}"


def card_ids(page: Page) -> list[str]:
    """The job ids of the cards shown, in page order."""
    return page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")


def play_card(page: Page, job_id: str) -> float:
    """Click a card and wait until its video has played past 0.2 s; return the time reached."""
    page.click(f'.card[data-id="{job_id}"] .media')
    video = f'.card[data-id="{job_id}"] video'
    page.wait_for_function(
        f"document.querySelector('{video}') && document.querySelector('{video}').currentTime > 0.2", timeout=20_000
    )
    return page.eval_on_selector(video, "v => v.currentTime")
