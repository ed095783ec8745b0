"""The status page in a real headless browser: Debian's Chromium, driven by Selenium.

Set MODSERVER_SCREENSHOT=path.png to make the README's screenshot: the page
of a server running the bundled demo modules (test_readme_screenshot).
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
    SECOND_LOOPBACK,
    ServerProcess,
    call,
    hello,
    kill_hard,
    needs_second_loopback,
    response,
    wait_for,
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
)
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
    "wavemeter": {"module": "basic", "entry": "Basic", "timeout": 20, "queue_limit": 5},
    "camera": ["broken_import", "Broken", None],
    "shutter": ["dies_loading", "Never", None],  # keeps dying: in backoff most of the time
}
STEADY = ("laser", "stage", "wavemeter", "camera")
SHOT = os.environ.get("MODSERVER_SCREENSHOT")
DEMO_CONFIG = Path(__file__).parent.parent / "modserver" / "demo" / "server.config"


def serve(directory: Path, config: dict):
    """A server with a status page; its ``url``."""
    srv = ServerProcess(directory, config, ("--http", "tcp:0:interface=127.0.0.1")).start()
    match = wait_for(
        lambda: re.search(r"status page on (http://127\.0\.0\.1:\d+/)", srv.log()),
        what="the status page",
    )
    srv.url = match.group(1)
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("page"), CONFIG) as srv:
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


# Reads every row's cells in one script run: the page's refresh replaces the
# rows between two steps of Selenium, never in the middle of a script.
_READ_TABLE = """
const names = arguments[0];
return [...document.querySelectorAll('tr[data-module]')].map(row => {
  const cells = {};
  for (const name of names) {
    const cell = row.querySelector('.' + name);
    cells[name] = cell ? cell.innerText.trim() : null;
  }
  return [row.dataset.module, cells];
});
"""
CELLS = (
    "state",
    "pid",
    "restarts",
    "exit",
    "calls",
    "errors",
    "timeouts",
    "p50",
    "p99",
    "queue",
    "timeout",
    "countdown",
)


def table(browser, cells=CELLS) -> dict:
    """The modules' table as the page shows it now: {module: {cell: text}}, in page order."""
    return dict(browser.execute_script(_READ_TABLE, list(cells)))


def waiting(browser, timeout: float = 20) -> WebDriverWait:
    """A bounded wait that looks again when a refresh has just replaced the
    elements a condition was looking at."""
    return WebDriverWait(
        browser,
        timeout,
        poll_frequency=0.05,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    )


def steady(browser, read):
    """``read(browser)``, read again if a refresh replaced its elements meanwhile."""
    return waiting(browser).until(lambda b: (read(b),))[0]


def cell(browser, module: str, name: str) -> str:
    """One cell's text; "" while the module has no row."""
    return (table(browser, (name,)).get(module) or {}).get(name) or ""


def click(browser, selector: str) -> None:
    """Click an element of the live part, in one step (a refresh may replace it any time)."""
    browser.execute_script("document.querySelector(arguments[0]).click()", selector)


def test_the_page_lists_every_module_as_the_server_sees_it(server, browser):
    server.wait_state("stage", "ready")
    browser.get(server.url)

    def agree():
        # The page shows what the server said at its last refresh (every
        # 2 s): wait, with a bound, until a refresh and the server agree.
        status = server.status()
        page = table(browser)
        if list(page) != list(status["modules"]):
            return False
        return all(
            page[name]["state"] == module["state"]
            and page[name]["pid"] == str(module["pid"] or "")
            and page[name]["restarts"] == str(module["restarts"])
            for name, module in status["modules"].items()
            if name in STEADY  # (the shutter may die again at any time)
        )

    wait_for(agree, timeout=30, interval=0.2, what="the page to show the server's status")
    assert server.status()["server"]["name"] in browser.find_element(By.TAG_NAME, "h1").text


def test_a_failed_modules_traceback_expands(server, browser):
    browser.get(server.url)
    assert cell(browser, "camera", "state") == "failed"
    trace = 'tr[data-module="camera"] .error pre'
    assert not steady(browser, lambda b: b.find_element(By.CSS_SELECTOR, trace).is_displayed())
    click(browser, 'tr[data-module="camera"] .error summary')
    waiting(browser).until(lambda b: b.find_element(By.CSS_SELECTOR, trace).is_displayed())
    assert "this_package_does_not_exist" in steady(
        browser, lambda b: b.find_element(By.CSS_SELECTOR, trace).text
    )


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


def test_the_numbers_of_each_module_are_on_the_page(server, browser):
    server.wait_state("wavemeter", "ready")
    for _ in range(3):
        assert response(call(server.port, "wavemeter", "add", 1, 2)) == 3
    assert call(server.port, "wavemeter", "boom")["error"] is True
    browser.get(server.url)
    module = server.module_status("wavemeter")
    assert cell(browser, "wavemeter", "calls") == str(module["calls"])
    assert cell(browser, "wavemeter", "errors") == str(module["errors"]) != "0"
    assert cell(browser, "wavemeter", "timeouts") == "0"
    assert cell(browser, "wavemeter", "p50").endswith(" ms")
    assert cell(browser, "wavemeter", "p99").endswith(" ms")
    assert cell(browser, "wavemeter", "queue") == "0 / 5"
    assert cell(browser, "wavemeter", "timeout") == "20 s"
    assert cell(browser, "laser", "timeout") == "none"


def test_the_restart_history_expands_with_times_and_causes(server, browser):
    server.wait_state("stage", "ready")
    pid = server.module_status("stage")["pid"]
    kill_hard(pid)
    wait_for(lambda: server.module_status("stage")["restarts"] >= 1, what="the restart")
    browser.get(server.url)
    history = 'tr[data-module="stage"] .restarts pre'
    assert not steady(browser, lambda b: b.find_element(By.CSS_SELECTOR, history).is_displayed())
    click(browser, 'tr[data-module="stage"] .restarts summary')
    text = waiting(browser).until(
        lambda b: (e := b.find_element(By.CSS_SELECTOR, history)).is_displayed() and e.text
    )
    assert re.search(r"\d\d:\d\d:\d\d died: " + re.escape(HARD_KILL_EXIT), text)


def test_a_module_in_backoff_counts_down_while_the_page_stays_open(server, browser):
    wait_for(
        lambda: (
            (s := server.module_status("shutter"))["state"] == "backoff" and s["restart_in"] >= 3
        ),
        timeout=30,
        what="a backoff of 3 s or more",
    )
    browser.get(server.url)

    def countdown(b):
        text = cell(b, "shutter", "countdown")
        match = re.fullmatch(r"restart in (\d+) s", text)
        return int(match.group(1)) if match else None

    first = WebDriverWait(browser, 10, poll_frequency=0.1).until(countdown)
    WebDriverWait(browser, 10, poll_frequency=0.1).until(
        lambda b: (left := countdown(b)) is not None and left < first
    )
    assert (
        "dies_loading: the vendor library crashed"
        in server.module_status("shutter")["last_error"]["traceback"]
    )


def test_the_config_file_going_bad_shows_a_warning_until_it_is_fixed(server, browser):
    browser.get(server.url)
    assert not browser.find_elements(By.CSS_SELECTOR, ".config-error")
    good = server.config_path.read_text()
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    try:
        server.config_path.write_text(good[:-3])  # a save cut short
        warning = wait.until(
            lambda b: b.execute_script(
                "const w = document.querySelector('.config-error'); return w && w.innerText"
            )
        )
        assert "not valid JSON" in warning
    finally:
        server.config_path.write_text(good)
    wait.until(lambda b: not b.find_elements(By.CSS_SELECTOR, ".config-error"))


def test_an_administrator_restarts_a_module_from_the_page(server, browser):
    server.wait_state("laser", "ready")
    old_pid = server.module_status("laser")["pid"]
    browser.get(server.url)
    click(browser, 'tr[data-module="laser"] button[data-action="restart"]')
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    wait.until(lambda b: b.find_element(By.ID, "control-result").text == "Restarting laser")
    wait.until(lambda b: cell(b, "laser", "pid") not in ("", str(old_pid)))
    assert server.module_status("laser")["restart_history"][-1]["detail"] == (
        "requested by the status page (127.0.0.1)"
    )


def test_an_administrator_rereads_the_config_from_the_page(server, browser):
    browser.get(server.url)
    click(browser, 'button[data-action="reload-config"]')
    WebDriverWait(browser, 20, poll_frequency=0.1).until(
        lambda b: b.find_element(By.ID, "control-result").text == "Reloaded config"
    )


@pytest.mark.skipif(not SHOT, reason="set MODSERVER_SCREENSHOT=path.png to make the README's")
def test_readme_screenshot(browser):
    """The page of a server running the bundled demo, after a little use."""
    directory = Path(tempfile.gettempdir()) / "lab"  # a neutral path for the picture
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    config = json.loads(DEMO_CONFIG.read_text())
    for name in ("echo", "laser", "wavemeter"):
        shutil.copy(DEMO_CONFIG.parent / f"{name}.py", directory / f"{name}.py")
    with serve(directory, config) as srv:
        for nm in (780, 795.5, 852, 1064):
            call(srv.port, "laser", "set_wavelength", nm)
        for channel in range(40):
            response(call(srv.port, "wavemeter", "GetWavelength", channel % 8))
        response(call(srv.port, "echo", "echo", "hello"))
        response(call(srv.port, "_lease", "take", "laser", 600))
        pid = srv.module_status("echo")["pid"]
        kill_hard(pid)
        wait_for(
            lambda: (
                (s := srv.module_status("echo"))["pid"] not in (None, pid) and s["state"] == "ready"
            ),
            what="echo back",
        )
        wait_for(lambda: srv.status()["server"]["uptime"] >= 4, what="a few seconds of uptime")
        browser.set_window_size(1800, 660)
        browser.get(srv.url)
        click(browser, 'tr[data-module="echo"] .restarts summary')
        browser.save_screenshot(SHOT)


@needs_second_loopback
def test_an_administrator_breaks_a_lease_from_the_page(server, browser):
    taken = call(server.port, "_lease", "take", "wavemeter", 60, source=SECOND_LOOPBACK)
    assert response(taken)["holder"] == SECOND_LOOPBACK
    browser.get(server.url)
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    wait.until(lambda b: cell(b, "wavemeter", "lease").startswith("127.0.0.2 until "))
    assert re.search(r"\(\d+ s left\)$", cell(browser, "wavemeter", "lease"))
    click(browser, 'tr[data-module="wavemeter"] button[data-action="break-lease"]')
    wait.until(
        lambda b: (
            b.find_element(By.ID, "control-result").text == "Broke 127.0.0.2's lease on wavemeter"
        )
    )
    assert server.module_status("wavemeter")["lease"] is None
    assert "lease of 127.0.0.2 broken by the status page (127.0.0.1)" in server.log()
