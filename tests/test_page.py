"""The try-it page at ``GET /``: served as it is, and used in a real headless Chromium.

The browser test starts ``textdistill serve`` in a subprocess and drives Chromium through
chromedriver (Debian packages ``chromium`` and ``chromium-driver``; ``.ci/run`` installs
them when it can). It skips, saying why, where either is missing.
``benchmarks/page_screenshot.py`` takes the picture in docs/BENCHMARKS.md the same way.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from serving import CLASSES, running_server, save_serving_student, serving_tokenizer  # noqa: E402

from textdistill.deploy.serve import create_app  # noqa: E402
from textdistill.inference.load import load  # noqa: E402

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"
TITLE = "球队比赛冠军进球"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny BiLSTM folder as tests/test_serve.py serves."""
    return save_serving_student(tmp_path_factory.mktemp("page") / "student", serving_tokenizer())


def test_get_root_serves_the_self_contained_page(student_dir: Path) -> None:
    app = create_app(load(student_dir))
    with TestClient(app) as client:
        r = client.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        html = r.text
        assert "/v1/classify" in html and "/v1/model" in html
        assert not re.search(r"https?://", html), "the page must load nothing from elsewhere"
        assert len(r.content) < 8 * 1024
        assert ".innerHTML" not in html  # model and user strings go in as textContent
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert "'unsafe-inline'" not in csp and "'sha256-" in csp
        # Not an API operation: the OpenAPI schema (and tests/test_schema.py) stay as they were.
        assert "/" not in client.get("/openapi.json").json()["paths"]


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM) if p), None)


@pytest.fixture()
def browser() -> tuple[str, str]:
    """Chromium and chromedriver, or a skip that says what to install (before any server)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    browser = _chromium()
    driver = CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "headless Chromium is not installed: apt-get install chromium chromium-driver "
            f"(found chromium: {browser}, chromedriver: {driver})"
        )
    return browser, driver


@pytest.fixture()
def server(student_dir: Path, tmp_path: Path) -> Iterator[str]:
    """``textdistill serve`` on a free port, in its own process; yields its base URL."""
    with running_server(student_dir, tmp_path / "server.log") as (base, _):
        yield base


def chrome(browser: str, driver: str) -> Any:
    """A headless Chromium session through chromedriver (caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=900,640")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def classify_in_page(
    web: Any, text: str, state: str, *, enter: bool = False, timeout: float = 20
) -> None:
    """Type ``text``, then click Classify (or press Enter); wait until the result is ``state``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = web.find_element(By.ID, "text")
    box.clear()
    if text:
        box.send_keys(text)
    web.execute_script("document.getElementById('result').dataset.state = 'sent'")
    if enter:
        box.send_keys(Keys.ENTER)
    else:
        web.find_element(By.ID, "classify").click()
    WebDriverWait(web, timeout).until(
        lambda w: w.find_element(By.ID, "result").get_attribute("data-state") == state
    )


def open_page(web: Any, base: str, labels: list[str], timeout: float = 20) -> None:
    """Load the page and wait until it shows the model's labels."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    web.get(f"{base}/")
    WebDriverWait(web, timeout).until(
        lambda w: len(w.find_elements(By.CSS_SELECTOR, "#labels li")) == len(labels)
    )


@pytest.mark.slow
def test_page_in_headless_chromium_against_a_real_server(
    browser: tuple[str, str], server: str
) -> None:
    from selenium.webdriver.common.by import By

    expected = httpx.post(f"{server}/v1/classify", json={"texts": [TITLE], "top_k": 3}).json()
    web = chrome(*browser)
    try:
        open_page(web, server, CLASSES)
        shown = [li.text for li in web.find_elements(By.CSS_SELECTOR, "#labels li")]
        assert shown == CLASSES
        assert web.find_element(By.ID, "model-name").text == "student"

        classify_in_page(web, TITLE, "done")
        label = web.find_element(By.ID, "result-label")
        assert label.text in CLASSES
        assert label.text == expected["results"][0]["label"]
        bars = web.find_elements(By.CSS_SELECTOR, "#bars li")
        assert [b.get_attribute("data-label") for b in bars] == [
            s["label"] for s in expected["results"][0]["top_k"]
        ]
        for bar, score in zip(bars, expected["results"][0]["top_k"], strict=True):
            assert float(bar.get_attribute("data-probability")) == pytest.approx(
                score["probability"]
            )
        for field in ("server-ms", "rtt-ms"):
            assert float(web.find_element(By.ID, field).text) >= 0

        # An empty submission: no result, a message that says why.
        classify_in_page(web, "", "error")
        error = web.find_element(By.ID, "error")
        assert error.is_displayed() and "empty text" in error.text
        assert not web.find_element(By.ID, "result").is_displayed()

        # A 4xx answer shows the service's own message: top_k beyond the labels is a 422.
        web.execute_script("document.getElementById('topk').value = 99")
        classify_in_page(web, TITLE, "error")
        assert "422 invalid_request" in error.text and "top_k" in error.text

        # Enter submits, and the page recovers after an error.
        web.execute_script("document.getElementById('topk').value = 1")
        classify_in_page(web, TITLE, "done", enter=True)
        assert label.text == expected["results"][0]["label"]
        assert len(web.find_elements(By.CSS_SELECTOR, "#bars li")) == 1

        # The CSP (only the page's own script and style) blocked nothing the page needs.
        blocked = [e for e in web.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not blocked, blocked
    finally:
        web.quit()
