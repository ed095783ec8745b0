"""The config reader: both entry forms, options, and skipped entries with reasons."""

from __future__ import annotations

import json
import os
import sys

import pytest

from modserver.server.config import ConfigError, ModuleSpec, parse_config, read_config


def parse(obj, which=lambda path: path if os.path.isabs(path) else None):
    return parse_config(json.dumps(obj), "/lab/config", which=which)


def test_list_form():
    config = parse(
        {"laser": ["mymodules.laser", "Laser", None], "wm": ["vendor.wm", "make", "dispatch"]}
    )
    assert config.modules == (
        ModuleSpec("laser", "mymodules.laser", "Laser", None, sys.executable),
        ModuleSpec("wm", "vendor.wm", "make", "dispatch", sys.executable),
    )
    assert config.problems == ()


def test_names_starting_with_an_underscore_are_ignored():
    config = parse({"_comment": "anything", "_off": ["a", "B", None], "on": ["a", "B", None]})
    assert config.names == ["on"] and config.problems == ()


def test_object_form_with_every_option():
    config = parse(
        {
            "stage": {
                "module": "stages.newport",
                "entry": "Stage",
                "dispatch": None,
                "python": "/opt/py32/python.exe",
                "cwd": "drivers",
                "env": {"DLL_PATH": "C:/x"},
                "timeout": 30,
                "queue_limit": 5,
                "watch": ["drivers/stage.ini", "/abs/file"],
            }
        }
    )
    (spec,) = config.modules
    # The paths as this system reads them (on Windows, on the current drive).
    assert spec.python == os.path.abspath("/opt/py32/python.exe")
    assert spec.cwd == os.path.normpath("/lab/config/drivers")
    assert spec.env == (("DLL_PATH", "C:/x"),)
    assert spec.timeout == 30.0 and spec.queue_limit == 5
    watched = ["/lab/config/drivers/stage.ini", "/abs/file"]
    assert spec.watch == tuple(map(os.path.normpath, watched))


def test_object_form_defaults():
    (spec,) = parse({"m": {"module": "a", "entry": "B"}}).modules
    assert spec == ModuleSpec("m", "a", "B")
    assert spec.queue_limit == 100 and spec.timeout is None and spec.python == sys.executable


def test_a_named_interpreter_is_found_on_path():
    config = parse_config(
        json.dumps({"m": {"module": "a", "entry": "B", "python": "python3.7"}}),
        "/lab",
        which=lambda name: "/usr/local/bin/" + name,
    )
    assert config.modules[0].python == os.path.abspath("/usr/local/bin/python3.7")


def test_a_relative_interpreter_path_is_relative_to_the_config():
    seen = []
    parse_config(
        json.dumps({"m": {"module": "a", "entry": "B", "python": "venv32/python"}}),
        "/lab",
        which=lambda p: seen.append(p) or p,
    )
    assert seen == [os.path.join("/lab", "venv32/python")]


@pytest.mark.parametrize(
    "value, reason",
    [
        (
            ["a", "B"],
            "the list must have 3 entries [import path, entry, dispatch or null], found 2",
        ),
        (["a", "B", None, "x"], "found 4"),
        ([5, "B", None], "the import path must be a non-empty string, not a number"),
        (["a", "", None], "the entry point must be a non-empty string"),
        (["a", "B", 7], "the dispatch method must be a non-empty string, not a number"),
        ("a.B", "the value must be a list [import path, entry, dispatch or null] or an object"),
        ({"entry": "B"}, 'the "module" option is missing'),
        ({"module": "a", "entry": "B", "timout": 3}, 'unknown option "timout"'),
        ({"module": "a", "entry": "B", "timeout": "3"}, '"timeout" must be a positive number'),
        ({"module": "a", "entry": "B", "timeout": 0}, '"timeout" must be a positive number'),
        ({"module": "a", "entry": "B", "queue_limit": -1}, '"queue_limit" must be a whole number'),
        ({"module": "a", "entry": "B", "queue_share": 0}, '"queue_share" must be a whole number'),
        ({"module": "a", "entry": "B", "queue_wait": -5}, '"queue_wait" must be a positive'),
        ({"module": "a", "entry": "B", "queue_wait": True}, '"queue_wait" must be a positive'),
        ({"module": "a", "entry": "B", "keep_alive_hold": -1}, '"keep_alive_hold" must be'),
        ({"module": "a", "entry": "B", "keep_alive_hold": False}, '"keep_alive_hold" must be'),
        ({"module": "a", "entry": "B", "max_lease": 0}, '"max_lease" must be a positive'),
        ({"module": "a", "entry": "B", "order": "fifo"}, '"order" must be one of turns, arrival'),
        (
            {"module": "a", "entry": "B", "env": {"A": 1}},
            '"env" must be an object of string values',
        ),
        ({"module": "a", "entry": "B", "watch": 5}, '"watch" must be a path or a list of paths'),
        (
            {"module": "a", "entry": "B", "python": "nopython"},
            'the interpreter "nopython" was not found',
        ),
    ],
)
def test_malformed_entries_are_skipped_with_a_reason_and_the_rest_load(value, reason):
    config = parse({"good": ["a", "B", None], "bad": value})
    assert config.names == ["good"]
    (problem,) = config.problems
    assert problem.startswith('config entry "bad" skipped: ') and reason in problem


@pytest.mark.parametrize("text", ["{ not json", "[1, 2]", '"text"', ""])
def test_unusable_config_text_raises_config_error(text):
    with pytest.raises(ConfigError):
        parse_config(text, "/lab")


def test_read_config_reports_a_missing_file_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        read_config(str(tmp_path / "absent.config"))
    assert str(caught.value).startswith("cannot read config file ")
    assert "No such file or directory" in str(caught.value) and "\n" not in str(caught.value)


def test_read_config_resolves_against_the_files_directory(tmp_path):
    path = tmp_path / "server.config"
    path.write_text('\ufeff{"m": {"module": "a", "entry": "B", "cwd": "sub"}}', encoding="utf-8")
    config = read_config(str(path))
    assert config.base_dir == str(tmp_path)
    assert config.modules[0].cwd == str(tmp_path / "sub")


def test_equal_entries_give_equal_specs_and_changes_do_not():
    first = parse({"m": ["a", "B", None]}).modules[0]
    assert first == parse({"m": {"module": "a", "entry": "B"}}).modules[0]
    assert first != parse({"m": ["a", "B", "d"]}).modules[0]


def test_queue_share_and_wait_are_read_and_apply_without_a_restart():
    entry = {"module": "a", "entry": "B", "queue_limit": 8}
    first = parse_config(json.dumps({"m": entry}), "/cfg").modules[0]
    assert (first.queue_share, first.queue_wait) == (None, 60.0)
    changed = dict(entry, queue_share=2, queue_wait=5)
    second = parse_config(json.dumps({"m": changed}), "/cfg").modules[0]
    assert (second.queue_share, second.queue_wait) == (2, 5.0)
    assert not first.needs_restart(second)


def test_min_period_defaults_and_is_checked():
    config = parse(
        {
            "a": {"module": "m", "entry": "E"},
            "b": {"module": "m", "entry": "E", "min_period": 0.5},
            "c": {"module": "m", "entry": "E", "min_period": 0},
        }
    )
    assert config.get("a").min_period == 0.1
    assert config.get("b").min_period == 0.5
    assert config.get("c") is None
    assert any('"min_period" must be a positive number' in p for p in config.problems)


def test_readings_are_read_and_checked():
    good = {
        "module": "m",
        "entry": "E",
        "readings": {"wl": {"function": "get", "args": [1], "every": 0.5}, "p": {"function": "p"}},
    }
    spec = parse({"a": good}).get("a")
    assert [(r.name, r.function, r.args, r.every) for r in spec.readings] == [
        ("wl", "get", "[1]", 0.5),
        ("p", "p", "[]", 1.0),
    ]
    for bad, why in [
        ({"wl": {"function": "get", "every": 0}}, '"every" of reading "wl"'),
        ({"wl": {"every": 1}}, '"readings" must be an object'),
        ({"wl": {"function": "get", "args": 5}}, 'the "args" of reading "wl"'),
        ({"wl": {"function": "get", "period": 1}}, 'unknown option "period"'),
        ([1], '"readings" must be an object'),
    ]:
        config = parse({"a": dict(good, readings=bad)})
        assert config.get("a") is None
        assert any(why in p for p in config.problems), (why, config.problems)
    spec_b = parse({"a": dict(good, readings={})}).get("a")
    assert not spec.needs_restart(spec_b)  # readings change without a restart
