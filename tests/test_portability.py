"""What keeps modserver portable: Python 3.7 for worker-side files, and a CI
workflow for Windows and macOS that is at least valid."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "modserver"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"

# Files a worker loads (it may run under a lab's Python 3.7), and the client
# that lab PCs run.
PYTHON_37_FILES = [
    "worker/worker",
    "worker/budget",
    "worker/platforms",
    "wire/codec",
    "wire/channel",
    "wire/binary",
    "client",
    "lab/discovery",
]


def test_the_syntax_check_knows_python_37():
    with pytest.raises(SyntaxError):
        ast.parse("if (n := 1): pass", feature_version=(3, 7))


@pytest.mark.parametrize("name", PYTHON_37_FILES)
def test_worker_side_files_keep_python_37_syntax(name):
    path = PACKAGE / f"{name}.py"
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 7))


@pytest.mark.parametrize("name", [name for name in PYTHON_37_FILES if name != "lab/discovery"])
def test_worker_side_files_import_only_the_standard_library(name):
    """At load time, that is: server-only parts may import more when called."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    imported.discard("__future__")
    assert imported <= sys.stdlib_module_names


@pytest.mark.skipif(
    importlib.util.find_spec("check_jsonschema") is None,
    reason="check-jsonschema is not installed",
)
def test_the_ci_workflow_is_a_valid_github_workflow():
    """GitHub's workflow schema, as bundled with check-jsonschema (no network)."""
    schema = ("--builtin-schema", "vendor.github-workflows")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *schema, str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_ci_workflow_runs_the_readme_test_command_everywhere():
    text = WORKFLOW.read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[test]' && python -m pytest" in readme
    assert "python -m pytest" in text and 'pip install -e ".[test]"' in text
    for runner in ("ubuntu-latest", "windows-latest", "macos-latest"):
        assert runner in text
    for version in ('"3.10"', '"3.13"', '"3.7"'):
        assert version in text


def test_the_worker_loads_only_the_standard_library_and_its_own_files(tmp_path):
    """As a lab's other Python runs it: no site-packages, this package not importable."""
    script = PACKAGE / "worker" / "worker.py"
    code = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('worker', sys.argv[1])\n"
        "worker = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(worker)\n"
        "names = ('wire', 'channel', 'binary', 'budget', 'platforms')\n"
        "siblings = {name: getattr(worker, name).__file__ for name in names}\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'siblings': siblings}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    top = {name.split(".")[0] for name in loaded["modules"]}
    assert not top & {"modserver", "twisted", "zope", "numpy"}, top
    siblings = {name: Path(path).resolve() for name, path in loaded["siblings"].items()}
    assert siblings == {
        "wire": PACKAGE / "wire" / "codec.py",
        "channel": PACKAGE / "wire" / "channel.py",
        "binary": PACKAGE / "wire" / "binary.py",
        "budget": PACKAGE / "worker" / "budget.py",
        "platforms": PACKAGE / "worker" / "platforms.py",
    }


def test_every_test_the_windows_run_names_exists():
    """.ci/windows_tests.txt: a name that went stale would fail the Windows run late."""
    listed = [
        line.strip()
        for line in (ROOT / ".ci" / "windows_tests.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert listed
    for entry in listed:
        entry = entry.removeprefix("not ")  # left out of a file named in full
        path, _, function = entry.partition("::")
        assert (ROOT / path).is_file(), entry
        if function:
            tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
            names = {
                node.name
                for node in tree.body
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            assert function in names, entry
