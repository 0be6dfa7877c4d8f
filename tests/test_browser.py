"""The report and the study page in a real browser: headless Chromium through Selenium.

The report of a real benchmark run opens from file:// with every table filled and every
image decoded; the study page is served by ``python -m benchmarks.study serve`` on
127.0.0.1 and a click records a vote that is in DuckDB even after the server is killed.
Screenshots go to the test's tmp folder and to /tmp/screens/ for a person to look at.
Skipped with the reason when Chromium or its driver is missing (``.ci/run`` installs
Debian's ``chromium`` and ``chromium-driver``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from publish_support import REAL_LIMIT, REAL_RESTORERS, real_results

from benchmarks.store import open_store

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SCREENS = Path(tempfile.gettempdir()) / "screens"
REPO = Path(__file__).resolve().parents[1]
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000")


def _find_browser() -> tuple[str, str] | str:
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(n)), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
         if os.access(p, os.X_OK)), None)
    if not browser or not driver:
        return ("Chromium and its driver are needed (apt-get install -y chromium "
                "chromium-driver; .ci/run installs them): "
                f"browser {'found' if browser else 'missing'}, "
                f"driver {'found' if driver else 'missing'}")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    found = _find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    # A fresh profile per run: no state from an earlier run or from a person's browser.
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def results(identities_dataset, tmp_path_factory) -> Path:
    return real_results(identities_dataset, tmp_path_factory.getbasetemp())


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    """A full-page PNG (through the DevTools protocol) in tmp_path and in SCREENS."""
    import base64
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000),
                 "scale": 1}})
    path = tmp_path / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENS / path.name)
    return path


def wait_for_images(driver, timeout: float = 20.0) -> list[dict]:
    """Wait until every <img> finished loading; return src and natural size of each."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if driver.execute_script(
                "return document.readyState === 'complete' && "
                "Array.from(document.images).every(i => i.complete)"):
            break
        time.sleep(0.1)
    return driver.execute_script(
        "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), "
        "w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}))")


def column(driver, table_id: str, index: int) -> list[str]:
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('#{table_id} tbody tr'))"
        f".map(r => r.cells[{index}].textContent.trim())")


def test_report_renders_from_file_url(browser, results, tmp_path):
    from selenium.webdriver.common.by import By

    from benchmarks import publish as P
    site = tmp_path / "site"
    assert P.main(["-i", str(results), "--out", str(site)]) == 0

    browser.get((site / "index.html").as_uri())
    images = wait_for_images(browser)
    assert images == []  # the overview has tables only
    with open_store(results, read_only=True) as store:
        n_runs = len(store.query("SELECT run_id FROM runs"))
    assert len(column(browser, "provenance", 0)) == n_runs == len(REAL_RESTORERS)
    screenshot(browser, tmp_path, "report-index")

    browser.find_element(By.LINK_TEXT, "reface-test").click()
    images = wait_for_images(browser)
    broken = [i["src"] for i in images if not i["w"] or not i["h"]]
    assert not broken, f"images that did not load: {broken}"
    faces = [i for i in images if "/img/" in i["src"]]
    # LQ, each restorer and GT with eye and mouth crops per face, plus references
    assert sum(i["src"].endswith("-eyes.png") for i in faces) == 5 * min(REAL_LIMIT, 6)
    assert all(i["shown"] > 0 for i in images)
    assert sum("/plots/" in i["src"] for i in images) >= 3  # psnr, ssim, ids (+ scatter)
    assert column(browser, "leaderboard", 0) == REAL_RESTORERS
    headers = browser.find_elements(By.CSS_SELECTOR, "#leaderboard thead th")
    names = [h.text for h in headers]
    assert names[:3] == ["restorer", "run id", "config hash"] and "psnr ↑" in names

    # Sorting: the restorer column ascending, then descending.
    headers[0].click()
    assert column(browser, "leaderboard", 0) == REAL_RESTORERS
    assert headers[0].get_attribute("aria-sort") == "ascending"
    headers[0].click()
    assert column(browser, "leaderboard", 0) == REAL_RESTORERS[::-1]
    # A numeric column sorts by its data-sort value.
    psnr_header = headers[[h.text for h in headers].index("psnr ↑")]
    psnr_header.click()
    values = [float(v) for v in column(browser, "leaderboard", names.index("psnr ↑"))]
    assert values == sorted(values)
    # The numbers shown are the CSV's numbers.
    csv_text = (site / "leaderboards" / "reface-test.csv").read_text()
    psnr = column(browser, "leaderboard", names.index("psnr ↑"))
    assert all(v and v in csv_text for v in psnr)
    shot = screenshot(browser, tmp_path, "report-dataset")
    assert shot.stat().st_size > 10_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_click_in_the_study_page_records_a_vote(browser, results, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    res = tmp_path / "results"
    shutil.copytree(results, res)
    port, token = _free_port(), "browser-test-token-0123456789"
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.study", "serve", "-i", str(res),
         "--methods", "lq,bicubic", "--port", str(port), "--token", token, "--seed", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"study server did not start: {proc.stdout.read()}") from None
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/study/{token}"
        browser.get(url)
        images = wait_for_images(browser)
        assert len(images) == 4 and all(i["w"] > 0 and i["shown"] > 0 for i in images), images
        assert "Which restoration" in browser.title
        assert not re.search(r"\b(bicubic|lq)\b", browser.page_source)  # blind
        screenshot(browser, tmp_path, "study-page")
        old = browser.find_element(By.ID, "choose-left")
        old.click()
        WebDriverWait(browser, 20).until(EC.staleness_of(old))
        WebDriverWait(browser, 20).until(
            lambda d: d.find_element(By.ID, "votes").text == "1")
        wait_for_images(browser)
        screenshot(browser, tmp_path, "study-after-vote")
        # The vote was committed before the answer: it survives the server being killed.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    with open_store(res, read_only=True) as store:
        votes = store.query("SELECT * FROM study_votes")
        runs = {r["run_id"]: r["restorer"] for r in store.query("SELECT * FROM runs")}
    assert len(votes) == 1
    v = votes[0]
    assert v["choice"] == "left" and v["winner_run"] == v["left_run"]
    assert {runs[v["left_run"]], runs[v["right_run"]]} == {"lq", "bicubic"}
    assert v["seconds"] >= 0 and v["session_id"]


@pytest.fixture(scope="module")
def video_store(data_root, tmp_path_factory) -> Path:
    from publish_support import video_results
    return video_results(data_root, tmp_path_factory.getbasetemp())


def test_video_report_has_a_page_per_clip(browser, video_store, tmp_path):
    from publish_support import VIDEO_METHODS, VIDEO_ODD_CLIP
    from selenium.webdriver.common.by import By

    from benchmarks import publish as P
    site = tmp_path / "site"
    assert P.main(["-i", str(video_store), "--out", str(site), "-q"]) == 0

    browser.get((site / "index.html").as_uri())
    wait_for_images(browser)
    # the clip names, markup included, are shown as text
    assert sorted(column(browser, "temporal-1", 0)) == sorted(
        [VIDEO_ODD_CLIP] * len(VIDEO_METHODS) + ["real_1"] * len(VIDEO_METHODS))
    screenshot(browser, tmp_path, "report-video-index")
    for clip, rows in (("real_1", ["LQ", "bicubic"]), (VIDEO_ODD_CLIP, ["LQ", "bicubic", "GT"])):
        browser.get((site / "index.html").as_uri())
        browser.find_element(By.LINK_TEXT, clip).click()
        images = wait_for_images(browser)
        broken = [i["src"] for i in images if not i["w"] or not i["h"]]
        assert not broken, f"images that did not load: {broken}"
        assert browser.find_element(By.TAG_NAME, "h1").text == clip
        strip = [i for i in images if "/img/strip-" in i["src"]]
        assert len(strip) == 5 * len(rows) and all(i["shown"] > 0 for i in strip)
        labels = browser.execute_script(
            "return Array.from(document.querySelectorAll('#strip tbody th'))"
            ".map(c => c.textContent.trim())")
        assert labels == rows
        plots = [i for i in images if "/plots/" in i["src"]]
        assert len(plots) == 2 and all(i["shown"] >= 400 for i in plots)
        # nothing wider than the window: the strip and plots fit a 1400 px screen
        assert browser.execute_script(
            "return document.documentElement.scrollWidth") <= 1400
        assert column(browser, "temporal", 0) == sorted(VIDEO_METHODS)
        name = "report-video-clip-" + ("odd" if clip != "real_1" else clip)
        assert screenshot(browser, tmp_path, name).stat().st_size > 10_000
