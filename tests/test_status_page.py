"""The status page in a real headless browser: Debian's Chromium, driven by Selenium.

Set MODSERVER_SCREENSHOT=path.png to keep a screenshot of the page (the one
in the README is made that way).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import (
    HARD_KILL_EXIT,
    ServerProcess,
    call,
    hello,
    kill_hard,
    response,
    wait_for,
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver (apt-get install chromium chromium-driver)",
)

CONFIG = {
    "laser": ["lifecycle", "Life", None],
    "stage": {"module": "slow_start", "entry": "SlowStart", "env": {"SLOW_START_SECONDS": "3"}},
    "wavemeter": ["basic", "Basic", None],
    "camera": ["broken_import", "Broken", None],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("page")
    if os.environ.get("MODSERVER_SCREENSHOT"):  # a neutral path for the picture
        directory = Path(tempfile.gettempdir()) / "lab"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir()
    with ServerProcess(directory, CONFIG, ("--http", "tcp:0:interface=127.0.0.1")).start() as srv:
        match = wait_for(
            lambda: re.search(r"status page on (http://127\.0\.0\.1:\d+/)", srv.log()),
            what="the status page",
        )
        srv.url = match.group(1)
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--window-size=1500,700",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def rows(browser) -> dict:
    return {
        r.get_attribute("data-module"): r
        for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-module]")
    }


def cell(browser, module: str, name: str) -> str:
    try:
        return rows(browser)[module].find_element(By.CSS_SELECTOR, f".{name}").text
    except Exception:  # the rows are being replaced by a refresh
        return ""


def test_the_page_lists_every_module_as_the_server_sees_it(server, browser):
    server.wait_state("stage", "ready")
    browser.get(server.url)
    status = server.status()
    assert list(rows(browser)) == list(status["modules"])
    for name, module in status["modules"].items():
        assert cell(browser, name, "state") == module["state"]
        assert cell(browser, name, "pid") == str(module["pid"] or "")
        assert cell(browser, name, "restarts") == str(module["restarts"])
    assert server.status()["server"]["name"] in browser.find_element(By.TAG_NAME, "h1").text


def test_a_failed_modules_traceback_expands(server, browser):
    browser.get(server.url)
    row = rows(browser)["camera"]
    assert cell(browser, "camera", "state") == "failed"
    trace = row.find_element(By.CSS_SELECTOR, ".error pre")
    assert not trace.is_displayed()
    row.find_element(By.CSS_SELECTOR, ".error summary").click()
    assert trace.is_displayed()
    assert "this_package_does_not_exist" in trace.text


def test_the_page_follows_a_killed_module_by_itself(server, browser):
    server.wait_state("stage", "ready")
    assert response(call(server.port, "wavemeter", "add", 1, 2)) == 3
    browser.get(server.url)
    old_pid = cell(browser, "stage", "pid")
    assert cell(browser, "stage", "state") == "ready" and old_pid
    kill_hard(int(old_pid))
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    wait.until(lambda b: cell(b, "stage", "state") == "starting")  # no reload: the page refreshes
    assert cell(browser, "stage", "exit") == HARD_KILL_EXIT
    wait.until(lambda b: cell(b, "stage", "state") == "ready")
    assert cell(browser, "stage", "pid") not in ("", old_pid)
    assert cell(browser, "stage", "restarts") == "1"
    shot = os.environ.get("MODSERVER_SCREENSHOT")
    if shot:
        rows(browser)["camera"].find_element(By.CSS_SELECTOR, ".error summary").click()
        browser.save_screenshot(shot)


def test_status_json_is_the_same_data_as_status(server):
    with urllib.request.urlopen(server.url + "status.json", timeout=10) as reply:
        assert reply.headers["Content-Type"] == "application/json"
        page = json.load(reply)
    status = response(hello(server.port, "_status"))
    assert page.keys() == status.keys()
    assert page["modules"].keys() == status["modules"].keys()
    for name, module in status["modules"].items():
        assert page["modules"][name].keys() == module.keys()
        assert (page["modules"][name]["state"], page["modules"][name]["pid"]) == (
            module["state"],
            module["pid"],
        )
