"""Headless Chromium for end-to-end tests of web pages: Debian's ``chromium`` and ``chromium-driver``
driven by Selenium, with no download of drivers or browsers and no background network traffic.

``.ci/run`` installs the two packages (``apt-get install chromium chromium-driver``); :func:`browser_missing`
tells a test what is absent so that it can skip with that reason where a browser is optional.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ['CHROMEDRIVER', 'CHROMIUM', 'browser_missing', 'full_page_screenshot', 'headless_chromium']

CHROMIUM = os.environ.get('VLT_CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('VLT_CHROMEDRIVER', '/usr/bin/chromedriver')
# Headless, no GPU, and none of Chromium's own connections (updates, sync, field trials, QUIC probes): the
# machines that run the tests reach no outside host, and a page under test must not either.
FLAGS = (
    '--headless=new',
    '--no-sandbox',  # CI runs as root
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--disable-quic',
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-extensions',
    '--disable-features=Translate,OptimizationHints,MediaRouter',
    '--metrics-recording-only',
)


def browser_missing() -> str | None:
    """Why no headless Chromium can run here (a missing program or Python package), or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f'{path} is not installed (apt-get install chromium chromium-driver)'
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'the selenium package is not installed'
    return None


@contextmanager
def headless_chromium(width: int = 1360, height: int = 1000) -> Iterator[Any]:
    """A Selenium ``WebDriver`` of a fresh headless Chromium (its own empty profile), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault('SE_AVOID_STATS', 'true')  # Selenium Manager is not used, but stay quiet anyway
    profile = tempfile.mkdtemp(prefix='vlt-chromium-')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f'--window-size={width},{height}', f'--user-data-dir={profile}'):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def full_page_screenshot(driver: Any, path: str, width: int = 1360) -> tuple[int, int]:
    """Save the whole page, ``width`` CSS pixels wide and as tall as its content, as a PNG at ``path``;
    returns its size. The viewport is set exactly through the DevTools protocol (a window size would include
    the browser's frame and cut the bottom off)."""
    metrics = {'width': width, 'height': 800, 'deviceScaleFactor': 1, 'mobile': False}
    driver.execute_cdp_cmd('Emulation.setDeviceMetricsOverride', metrics)
    height = int(driver.execute_script('return document.documentElement.scrollHeight'))
    driver.execute_cdp_cmd('Emulation.setDeviceMetricsOverride', dict(metrics, height=height))
    driver.execute_script('window.scrollTo(0, 0)')
    if not driver.save_screenshot(path):
        raise RuntimeError(f'Chromium could not save a screenshot to {path}')
    return width, height
