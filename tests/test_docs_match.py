"""The docs show what the server really prints: examples/README.md's log lines come
from running the example project (times, pids and durations aside)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ServerProcess, call, modserver_command, response, wait_for

ROOT = Path(__file__).resolve().parent.parent
LOG_LINE = re.compile(r"^\d{4}-\S+ (\[\w+#\w+\] .*)$")


def shape(line: str) -> str:
    """A log line without its time, its numbers made alike."""
    match = LOG_LINE.match(line)
    return re.sub(r"\d+(\.\d+)?", "N", match.group(1)) if match else ""


def documented_log_lines() -> list[str]:
    text = (ROOT / "examples" / "README.md").read_text()
    return [shape(line) for line in text.splitlines() if shape(line)]


def test_the_example_readmes_log_lines_are_what_the_server_prints(tmp_path):
    documented = documented_log_lines()
    assert len(documented) >= 8
    srv = ServerProcess(tmp_path, config=None)
    config = str(ROOT / "examples" / "server.config")
    srv.start(
        command=[*modserver_command(), "--config", config, "--listen", "tcp:0:interface=127.0.0.1"],
        wait_ready=False,
    )
    try:
        reply = call(srv.port, "moduleA", "anything", "ay", 1, False, None)
        assert response(reply) == "You successfully called the dispatching method!"
        assert response(call(srv.port, "moduleB", "fun1", "x", 2.5))
        wait_for(
            lambda: set(documented) <= {shape(line) for line in srv.log().splitlines()},
            what="every documented log line",
        )
    finally:
        srv.stop()


def newcomer_texts() -> dict:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts += sorted((ROOT / "modserver").glob("*.py"))
    return {path.relative_to(ROOT).as_posix(): path.read_text() for path in texts}


def test_install_lines_work_in_a_checkout():
    """modserver is installed from its checkout: 'modserver[discovery]' would ask PyPI."""
    for name, text in newcomer_texts().items():
        assert "pip install 'modserver[" not in text, name
    assert "pip install '.[discovery]'" in (ROOT / "README.md").read_text()


def test_the_readme_says_a_line_that_is_not_json_gets_a_json_reply():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "gets a plain reply" not in readme
    assert "(`hello there`) gets a one-line JSON error reply, not URL-encoded," in readme
