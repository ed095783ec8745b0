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
    texts += sorted((ROOT / "modserver").rglob("*.py"))
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


def test_the_readme_maps_every_file_of_the_package():
    """README's "How it works" names every subpackage and module: a newcomer's map."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## How it works") :]
    package = ROOT / "modserver"
    for folder in sorted(p for p in package.iterdir() if (p / "__init__.py").is_file()):
        assert f"├── {folder.name}/" in section or f"└── {folder.name}/" in section, folder
        if folder.name == "demo":
            continue
        for module in folder.glob("*.py"):
            if module.stem != "__init__":
                assert re.search(rf"\b{module.stem}\b", section), module
    for module in package.glob("*.py"):
        if module.stem != "__init__":
            assert f"{module.name}" in section, module


def test_every_subpackage_says_what_belongs_in_it_and_what_it_may_import():
    import ast

    for init in sorted((ROOT / "modserver").glob("*/__init__.py")):
        if init.parent.name == "demo":
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "What belongs here" in doc and "What it may import" in doc, init


# What each subpackage may import of the package (beyond itself), as its
# docstring says; the server's own folder may import anything.
MAY_IMPORT = {
    "wire": set(),
    "net": {"wire"},
    "worker": {"supervision.winjobs"},  # only inside the server-side spawn (see worker/)
    "supervision": {"wire", "net", "worker.platforms", "server.config", "server.logs"},
    "web": {"wire", "supervision", "server.access"},
    "lab": {"client", "server.logs", "server.listeners"},
}


def _package_imports(path: Path) -> set:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name[len("modserver.") :] for name in names if name.startswith("modserver."))
    return found


def test_each_subpackage_imports_only_what_its_docstring_allows():
    for folder, allowed in MAY_IMPORT.items():
        for module in sorted((ROOT / "modserver" / folder).glob("*.py")):
            for name in _package_imports(module):
                ok = name.startswith(folder + ".") or any(
                    name == rule or name.startswith(rule + ".") for rule in allowed
                )
                assert ok, f"modserver/{folder}/{module.name} imports modserver.{name}"


def test_every_import_of_the_package_inside_it_resolves():
    """Lazy imports too (inside functions), which only run on some paths."""
    import ast
    import importlib

    for path in sorted((ROOT / "modserver").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            if node.module.split(".")[0] != "modserver":
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                found = hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                )
                assert found, f"{path.relative_to(ROOT)}: from {node.module} import {alias.name}"
