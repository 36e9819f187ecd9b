"""The page at / in a real headless browser (Debian's chromium driven by Selenium through Debian's
chromedriver; nothing is downloaded): token prompt, live job list, components, and a click on a
picture showing the same neighbours as the API. A screenshot is kept in test-artifacts/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from distnmf.client import Client
from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL = "apt-get install chromium chromium-driver (Debian; .ci/run does this when they are missing)"
ARTIFACTS = Path(os.environ.get("DISTNMF_TEST_ARTIFACTS", "test-artifacts"))
TOKEN = "page-test-token"

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason=f"the browser test needs chromium and chromedriver: {INSTALL}")


@pytest.fixture(scope="module")
def service(dask_cluster, tmp_path_factory) -> Iterator[str]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("page"), scheduler=dask_cluster.scheduler_address,
                        api_token=TOKEN)
    with BackgroundServer(settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_page_asks_for_the_token_follows_the_job_and_shows_the_api_neighbours(service, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    digits = load_digits()
    X = digits.data.astype(np.float32)
    labels = [f"digit{i:04d}-{d}" for i, d in enumerate(digits.target)]
    with Client(service, token=TOKEN) as client:
        matrix = client.upload(X, name="digits", row_labels=labels, image_shape=(8, 8))
        job = client.submit(matrix, n_components=8, max_iter=40, random_state=0)

    wait = WebDriverWait(browser, 120)
    browser.get(service + "/")
    token_input = wait.until(ready.visibility_of_element_located((By.ID, "token")))
    token_input.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    status = (By.CSS_SELECTOR, f'tr[data-job="{job.id}"] .status')
    wait.until(ready.text_to_be_present_in_element(status, "succeeded"))
    progress = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job.id}"] progress')
    assert progress.get_attribute("value") == progress.get_attribute("max")  # complete, also if it converged early

    browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job.id}"]').click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".component")) == 8)
    wait.until(lambda d: all(img.get_property("naturalWidth") > 0
                             for img in d.find_elements(By.CSS_SELECTOR, ".component img")))
    picture = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, '.component[data-component="2"] .row-item')))
    row = int(picture.get_attribute("data-index"))
    picture.click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#most .hit")) == 12
               and len(d.find_elements(By.CSS_SELECTOR, "#least .hit")) == 12)
    wait.until(lambda d: all(img.get_property("naturalWidth") > 0 for img in d.find_elements(By.CSS_SELECTOR, ".hit img")))
    shown_most = [int(e.get_attribute("data-index")) for e in browser.find_elements(By.CSS_SELECTOR, "#most .hit")]
    shown_least = [int(e.get_attribute("data-index")) for e in browser.find_elements(By.CSS_SELECTOR, "#least .hit")]

    auth = {"Authorization": f"Bearer {TOKEN}"}
    api = f"{service}/api/v1/jobs/{job.id}/similar"
    most = httpx.get(api, params={"row": row, "k": 12}, headers=auth).json()
    least = httpx.get(api, params={"row": row, "k": 12, "least": "true"}, headers=auth).json()
    assert shown_most == [h["index"] for h in most["hits"]]
    assert shown_least == [h["index"] for h in least["hits"]]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "page.png"))


def test_docs_render_offline_from_the_service(service, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    html = httpx.get(service + "/docs").text
    assert "/static/swagger/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    browser.get(service + "/docs")
    title = WebDriverWait(browser, 60).until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".swagger-ui .info .title")))
    assert "distnmf" in title.text
    assert len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) > 10
    browser.save_screenshot(str(ARTIFACTS / "docs.png"))
