"""A screenshot of the try-it page (``GET /``) with a result shown, for docs/BENCHMARKS.md.

    python benchmarks/page_screenshot.py --model /work/bench/modes-new/students/bilstm-soft \\
        --text "国足 世预赛 主场 2比0 战胜 泰国" --out docs/img/serve-page.png

Starts ``textdistill serve`` on a free local port, opens the page in headless Chromium
(Debian ``chromium`` + ``chromium-driver``, through Selenium; ``fonts-noto-cjk`` for the
Chinese), types ``--text``, clicks Classify ``--clicks`` times (waiting for each result) and saves
a PNG of the whole page with the last result. Prints the label the page shows, what
``/v1/classify`` answers for the same text, and the times the page shows, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from launch import free_port  # tests/launch.py; not part of the package


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the server was not ready in {timeout:.0f} s")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


def _chrome(width: int, height: int) -> Any:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if browser is None or not os.access(driver, os.X_OK):
        raise SystemExit("install headless Chromium: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder to serve")
    parser.add_argument("--text", default="国足 世预赛 主场 2比0 战胜 泰国")
    parser.add_argument("--out", default="docs/img/serve-page.png")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument(
        "--clicks", type=int, default=3, help="Classify clicks; the picture shows the last"
    )
    parser.add_argument("--size", default="820x560", help="window WIDTHxHEIGHT (CSS pixels)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "textdistill", "serve", "--model", args.model]
    cmd += ["--port", str(port), "--threads", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            _wait_ready(proc, base, log, timeout=120)
            api = httpx.post(
                f"{base}/v1/classify", json={"texts": [args.text], "top_k": args.top_k}
            ).json()["results"][0]
            web = _chrome(width, height)
            try:
                web.get(f"{base}/")
                WebDriverWait(web, 30).until(
                    lambda w: w.find_elements(By.CSS_SELECTOR, "#labels li")
                )
                web.execute_script(f"document.getElementById('topk').value = {args.top_k}")
                web.find_element(By.ID, "text").send_keys(args.text)
                for _ in range(args.clicks):
                    web.execute_script("document.getElementById('result').dataset.state = ''")
                    web.find_element(By.ID, "classify").click()
                    WebDriverWait(web, 30).until(
                        lambda w: (
                            w.find_element(By.ID, "result").get_attribute("data-state")
                            in ("done", "error")
                        )
                    )
                # The whole page, not the window: a viewport as tall as the content.
                height = web.execute_script("return document.documentElement.scrollHeight")
                metrics = {
                    "width": width,
                    "height": height,
                    "deviceScaleFactor": 1,
                    "mobile": False,
                }
                web.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                web.save_screenshot(args.out)

                def shown(id_: str) -> str:
                    return str(web.find_element(By.ID, id_).text)

                page = {
                    "label": shown("result-label"),
                    "probability": shown("result-prob"),
                    "model_ms_per_text": shown("server-ms"),
                    "queue_ms": shown("queue-ms"),
                    "round_trip_ms": shown("rtt-ms"),
                    "error": shown("error"),
                }
            finally:
                web.quit()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        json.dumps(
            {
                "model": args.model,
                "text": args.text,
                "page": page,
                "api": api,
                "screenshot": args.out,
            },
            ensure_ascii=False,
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
