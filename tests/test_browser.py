"""The README's MLflow comparison recipe, followed in a real headless Chromium against `mlflow ui` on
127.0.0.1: open the UI, open the experiment, type the README's search, tick the `test_acc` column; the table
must list every method exactly once (the superseded rerun and the spectral runs filtered out) with its test
accuracy.

Needs Debian's chromium and chromium-driver (.ci/run installs them) and the selenium package (pyproject's
test extra). Skipped with the reason where they are absent; in CI (CI=true) their absence is a failure.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipeline.config.layout import ROOT
from pipeline.config.loading import load
from pipeline.infra.tracking import COMPARE_FILTER, Run

from .conftest import wait_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    missing = None
except ImportError:
    missing = "the selenium package is not installed (pip install '.[test]')"
if missing is None and not (CHROMIUM and DRIVER):
    missing = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
if missing and os.environ.get("CI") == "true":
    pytest.fail(f"CI=true but {missing}: .ci/run must install it", pytrace=False)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing is not None, reason=missing or "")]

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A store with one retrain run per method (test_acc 0.50, 0.51, ...), a superseded older finetune run,
    and a spectral run per method; `mlflow ui` serving it. Yields (url, {method: test_acc})."""
    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cfg = load("smoke")
    expected = {}
    try:
        cell = {"dataset": "synthetic", "arch": "resnet20", "seed": 0, "sparsity": 0.9}
        with Run(cfg, "retrain", {**cell, "method": "finetune"}, {"x": 0}) as r:
            r.log_metrics({"test_acc": 0.0123}, 1)                     # superseded by the rerun below
        for i, m in enumerate(cfg.grid.methods):
            expected[m] = round(0.5 + i / 100, 4)
            with Run(cfg, "retrain", {**cell, "method": m}, {"x": 1}) as r:
                r.log_metrics({"val_acc": 0.4, "train_loss": 1.0}, 1)
                r.log_metrics({"test_acc": expected[m], "train_seconds": 3.0}, 1)
            with Run(cfg, "spectral", {**cell, "method": m}, {"x": 1}) as r:
                r.log_metrics({"heatmap_seconds": 1.0}, 0)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        def answers() -> bool:
            try:
                urllib.request.urlopen(url, timeout=5)
                return True
            except OSError:
                return False
        wait_for(answers, "mlflow ui to answer", 180, alive=lambda: server.poll() is None, interval=0.5)
        yield url, expected
    finally:
        os.killpg(server.pid, signal.SIGTERM)        # the server and its uvicorn worker (own session)
        server.wait(30)


def test_readme_recipe_finds_every_method_and_its_test_accuracy(ui, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    readme = (ROOT / "docs" / "configuration.md").read_text()
    assert f"`{COMPARE_FILTER}`" in readme, "the manual's recipe uses the filter this test types"
    url, expected = ui
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    wait = WebDriverWait(d, 60)
    try:
        d.get(url)                                                       # 1. "Model training", the experiment
        wait.until(EC.element_to_be_clickable((By.XPATH, "//*[normalize-space()='Model training']"))).click()
        wait.until(EC.element_to_be_clickable((By.LINK_TEXT, "smoke"))).click()
        search = wait.until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, "input[placeholder*='metrics.rmse'], input[placeholder*='Search runs']")))
        search.send_keys(COMPARE_FILTER)                                 # 2. the README's search
        # Typed once the input holds it (a controlled React input); the autocompletion list opens from that
        # state, Escape closes it, then Enter submits the filter (Enter on an open list would pick an entry).
        wait.until(lambda _: search.get_attribute("value") == COMPARE_FILTER)
        search.send_keys(Keys.ESCAPE, Keys.ENTER)
        wait.until(lambda _: f"{len(expected)} matching runs" in d.find_element(By.TAG_NAME, "body").text)
        d.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()    # 3. Columns: test_acc
        d.switch_to.active_element.send_keys("test_acc")
        wait.until(EC.element_to_be_clickable(
            (By.XPATH, "//span[contains(@class,'tree-title')][normalize-space()='test_acc']"))).click()
        d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        found: dict[str, float] = {}

        def table_shows_every_method(_) -> bool:
            """The table as it is now (it renders the new column asynchronously): {method: last cell}."""
            cells: dict[str, list[str]] = {}
            for row in d.find_elements(By.CSS_SELECTOR, "div[role=row][row-index]"):
                cells.setdefault(row.get_attribute("row-index"), []).append(row.text)
            found.clear()
            for parts in cells.values():
                text = "\n".join(parts).splitlines()
                name = next((t for t in text if " | retrain " in t), None)
                try:
                    found[name.split()[0]] = round(float(text[-1]), 4)
                except (AttributeError, IndexError, ValueError):
                    pass                        # the row without its test_acc cell yet
            return found == expected
        try:
            WebDriverWait(d, 60, ignored_exceptions=(StaleElementReferenceException,)).until(table_shows_every_method)
        except TimeoutException:
            pass                                # the assertion below shows what the table held
    finally:
        d.save_screenshot(str(tmp_path / "mlflow_ui.png"))
        d.quit()
    assert found == expected
