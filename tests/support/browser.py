"""Debian's Chromium, headless, for the tests that look at a page the way a person would.

``headless_page()`` opens one page and collects what the console reports as an error and any
uncaught page error in ``problems``; the caller asserts on them after its checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_or_skip() -> str:
    """Debian's chromium; installed here when missing and possible (CI runs as root with apt)."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True)
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed and cannot be installed here (apt-get install chromium)")
    return CHROMIUM


@dataclass
class Browsing:
    page: Page
    problems: list[str] = field(default_factory=list)


@asynccontextmanager
async def headless_page(width: int = 1400, height: int = 1000) -> AsyncIterator[Browsing]:
    """A page in headless Chromium (skips the test when Chromium cannot be had)."""
    from playwright.async_api import async_playwright

    executable = chromium_or_skip()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            browsing = Browsing(page)
            page.on(
                "console", lambda message: browsing.problems.append(message.text) if message.type == "error" else None
            )
            page.on("pageerror", lambda error: browsing.problems.append(str(error)))
            yield browsing
        finally:
            await browser.close()
