"""The worker's words about arguments and its choice of files to watch, without a process."""

from __future__ import annotations

import os

import pytest

from modserver.worker import worker


class Instrument:
    def set(self, nm):
        pass

    def between(self, low, high=1000):
        pass

    def many(self, first, *rest):
        pass

    def keyed(self, value, *, unit):
        pass

    def nothing(self):
        pass


@pytest.mark.parametrize(
    ("method", "args", "said"),
    [
        ("set", (1, 2), "(nm) takes 1 argument but 2 were given"),
        ("set", (), "(nm) takes 1 argument but 0 were given"),
        ("between", (1, 2, 3), "(low, high=1000) takes 1 to 2 arguments but 3 were given"),
        ("many", (), "(first, *rest) takes at least 1 argument but 0 were given"),
        ("nothing", (5,), "() takes 0 arguments but 1 was given"),
        ("keyed", (1,), "(value, *, unit) needs the keyword argument unit, which clients "
         "cannot pass"),
    ],
)  # fmt: skip
def test_argument_problems_count_the_clients_arguments(method, args, said):
    assert worker.argument_problem(getattr(Instrument(), method), args) == said


def test_arguments_that_fit_are_no_problem():
    assert worker.argument_problem(Instrument().between, (1,)) is None


def test_pythonpath_packages_are_libraries_but_the_modules_own_tree_is_not(tmp_path, monkeypatch):
    vendor, config_dir = tmp_path / "vendor", tmp_path / "config"
    files = [
        vendor / "serial" / "__init__.py",
        vendor / "labmods" / "stage.py",
        config_dir / "helper.py",
    ]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(vendor), str(config_dir)]))
    own = os.path.normcase(str(vendor / "labmods")) + os.sep
    found = [path for path, _ in worker.user_files(files, [str(config_dir)], own)]
    assert found == sorted([str(files[1]), str(files[2])])
    found = [path for path, _ in worker.user_files(files, [str(config_dir)], None)]
    assert found == [str(files[2])]


def test_the_import_systems_frames_are_left_out_however_its_files_are_named():
    # Windows' embeddable Python ships its standard library compiled, its
    # frames named relatively ("importlib\__init__.py"): known by module name.
    machinery = compile(
        "def import_module(load):\n    return load()\n", "importlib\\__init__.py", "exec"
    )
    namespace = {"__name__": "importlib"}
    exec(machinery, namespace)

    def users_code():
        raise ModuleNotFoundError("No module named 'does_not_exist'")

    try:
        namespace["import_module"](users_code)
    except ModuleNotFoundError as exc:
        # From the import system's frame on, as in the worker (this test's own frame aside).
        shown = worker.module_traceback(exc.with_traceback(exc.__traceback__.tb_next))
    assert "importlib" not in shown
    assert "users_code" in shown and shown.endswith("No module named 'does_not_exist'\n")
