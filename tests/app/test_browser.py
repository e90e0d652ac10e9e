"""The app in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) driven
by selenium uploads an image through the page, sees it with its background removed, runs
image → 3D, waits for the GLB download link, and saves a screenshot; a text file named .png
gets its message in the page.

Chromium stalls on a closed network unless told not to call home, hence the flags. The
screenshot goes to the test's folder, and also to `$VOXFORGE_APP_SCREENSHOT` when that is set
(docs/img/app.png was made so).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.app.bad_files import object_on_white, text_named_png

pytestmark = pytest.mark.browser

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1500",
]


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.is_file() and DRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")  # here, not at collection
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


def test_upload_generate_and_download_in_the_page(browser, app_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120, poll_frequency=0.25)
    browser.get(app_server.url)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#image-upload input[type=file]"))
    upload.send_keys(str(object_on_white(tmp_path / "chair.png")))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#processed img"))  # background removed, shown
    browser.find_element(By.CSS_SELECTOR, "#generate").click()

    def glb_links(driver):
        links = driver.find_elements(By.CSS_SELECTOR, "#downloads a")
        return [a for a in links if (a.get_attribute("href") or "").endswith(".glb")]

    links = wait.until(glb_links)
    assert links[0].get_attribute("href").startswith(app_server.url)
    assert "asset.glb" in links[0].text or "KB" in links[0].text or "B" in links[0].text
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#turntable video"))
    shot = tmp_path / "app.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("VOXFORGE_APP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["VOXFORGE_APP_SCREENSHOT"])

    # a text file named .png: the page shows why, as a message (no traceback)
    upload = browser.find_element(By.CSS_SELECTOR, "#image-upload input[type=file]")
    upload.send_keys(str(text_named_png(tmp_path / "fake.png")))
    toast = wait.until(
        lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, ".toast-body") if "not an image" in t.text]
    )
    assert "fake.png" in toast[0].text and "Traceback" not in toast[0].text
