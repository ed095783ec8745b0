"""Installing the package makes ``twistd modserver`` available from anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ON_WINDOWS, TWISTD_FOREGROUND, call, hello, response, wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A virtual environment with nothing of ours in it."""
    venv = pytest.importorskip("venv", reason="this Python has no venv module")
    where = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(where)
    return where / ("Scripts" if ON_WINDOWS else "bin")


def _pip(bin_dir: Path, *args: str) -> None:
    result = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _twistd_help_from(bin_dir: Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(bin_dir / "twistd"), "--help"], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _lists_modserver(listing: str) -> bool:
    return any(line.split()[:1] == ["modserver"] for line in listing.splitlines())


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_twistd_finds_the_plugin_after_install(fresh_venv, tmp_path, editable):
    _pip(fresh_venv, *(["-e"] if editable else []), str(ROOT))
    assert _lists_modserver(_twistd_help_from(fresh_venv, tmp_path))
    subprocess.run(
        [str(fresh_venv / "python"), "-m", "pip", "uninstall", "-qy", "modserver"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert not _lists_modserver(_twistd_help_from(fresh_venv, tmp_path))


def test_a_fresh_install_serves_the_demo(fresh_venv, tmp_path):
    """The README's first command: install, then ``twistd -n modserver`` answers."""
    _pip(fresh_venv, str(ROOT))
    log = tmp_path / "server.log"
    twistd = [str(fresh_venv / "twistd"), *TWISTD_FOREGROUND, "modserver"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*twistd, "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        match = wait_for(
            lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text()),
            what="the demo server",
        )
        port = int(match.group(1))
        assert response(hello(port, "_get_modules")) == ["echo", "laser", "wavemeter"]
        wait_for(lambda: not call(port, "echo", "add", 1, 2)["error"], what="echo to load")
        assert "serving the bundled demo modules" in log.read_text()
    finally:
        process.terminate()
        process.wait(20)


def test_plugin_is_found_by_this_environment(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "modserver",
            "--help",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--listen" in result.stdout


def _allowed_twisted(environment: dict) -> list:
    """Whether each Twisted release is allowed by our dependencies there."""
    from importlib.metadata import requires

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    where = {**default_environment(), **environment, "extra": ""}
    wanted = [Requirement(text) for text in requires("modserver")]
    wanted = [
        r for r in wanted if r.name == "twisted" and (not r.marker or r.marker.evaluate(where))
    ]
    assert wanted
    releases = ("24.3.0", "25.5.0", "26.4.0", "26.10.0")
    return [v for v in releases if all(v in r.specifier for r in wanted)]


def test_windows_python_312_never_gets_the_twisted_whose_twistd_does_not_start():
    # Twisted 26.10.0's filepath imports PureWindowsPath for Python <= 3.12.0
    # only and uses it on every 3.12: twistd fails at start on Windows.
    windows_312 = {"sys_platform": "win32", "python_version": "3.12", "os_name": "nt"}
    assert _allowed_twisted(windows_312) == ["24.3.0", "25.5.0", "26.4.0"]
    for elsewhere in (
        {"sys_platform": "win32", "python_version": "3.13", "os_name": "nt"},
        {"sys_platform": "linux", "python_version": "3.12", "os_name": "posix"},
    ):
        assert "26.10.0" in _allowed_twisted(elsewhere)
