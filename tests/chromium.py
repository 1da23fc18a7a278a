"""Headless Chromium (Debian packages chromium and chromium-driver) driven with Selenium, for
checking that the HTML report renders. Also a command that screenshots a report:

    python -m tests.chromium REPORT.html SCREENSHOT.png
"""

from __future__ import annotations

import os
import shutil
import sys


def unavailable_reason() -> str:
    """'' when headless Chromium can be driven here, else why not and how to fix it."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not on PATH; install the Debian packages chromium and "
                f"chromium-driver (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; the [test] extra has it)"
    return ""


def open_page(path: str, width: int = 1200, height: int = 900):
    """A headless Chromium WebDriver showing the local file `path`, browser console logging on,
    no network: background networking, extensions and sync off."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-extensions", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.get("file://" + os.path.abspath(path))
    return driver


def screenshot(path: str, target: str, width: int = 1200) -> None:
    """Saves a full-page PNG of the HTML file `path` to `target`."""
    driver = open_page(path, width)
    try:
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(width, height + 100)
        driver.save_screenshot(target)
    finally:
        driver.quit()


if __name__ == "__main__":
    screenshot(sys.argv[1], sys.argv[2])
