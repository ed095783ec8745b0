"""The config file: JSON text to immutable module specs (no I/O but the read).

Two entry forms, mixable in one file::

    {
        "laser": ["mymodules.laser", "Laser", null],
        "stage": {"module": "mymodules.stage", "entry": "make_stage",
                  "dispatch": null, "timeout": 30, "python": "C:/Python37-32/python.exe"}
    }

Names starting with ``_`` are comments and are ignored.  A malformed entry is
skipped with a reason naming it and the problem; the other entries load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from modserver.server.access import Rule, parse_rule
from modserver.server.watcher import content_digest
from modserver.supervision.admission import DEFAULT_QUEUE_WAIT
from modserver.supervision.turns import DEFAULT_KEEP_ALIVE_HOLD, ORDERS, TURNS
from modserver.wire.messages import positive_seconds

DEFAULT_QUEUE_LIMIT = 100

_OPTIONS = (
    "module",
    "entry",
    "dispatch",
    "python",
    "cwd",
    "env",
    "timeout",
    "queue_limit",
    "queue_share",
    "queue_wait",
    "watch",
    "allow",
    "keep_alive_hold",
    "max_lease",
    "order",
    "min_period",
    "readings",
)

# Options whose change applies at once; a change to any other restarts the worker.
LIVE_FIELDS = (
    "allow",
    "queue_share",
    "queue_wait",
    "keep_alive_hold",
    "max_lease",
    "order",
    "min_period",
    "readings",
)

# The shortest period at which the server polls a watched reading of a module.
DEFAULT_MIN_PERIOD = 0.1


class ConfigError(Exception):
    """The config file as a whole cannot be used (unreadable, not JSON)."""


class _BadEntry(Exception):
    """One entry is malformed; its message says why."""


@dataclass(frozen=True)
class ReadingSpec:
    """A reading the config names: the server watches it from start."""

    name: str
    function: str
    args: str = "[]"  # JSON text (a spec is hashable and immutable)
    every: float = 1.0


@dataclass(frozen=True)
class ModuleSpec:
    """Everything needed to run one module; equal specs mean an unchanged entry."""

    name: str
    module: str
    entry: str
    dispatch: str | None = None
    python: str = sys.executable
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    timeout: float | None = None
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    queue_share: int | None = None  # per client; None: all but a quarter of queue_limit
    queue_wait: float = DEFAULT_QUEUE_WAIT  # seconds a request may wait for its turn
    watch: tuple[str, ...] = ()
    allow: tuple[Rule, ...] | None = None  # who may open it (None: whoever the server admits)
    # Seconds a keep-alive session keeps the module while others wait (0: no limit).
    keep_alive_hold: float = DEFAULT_KEEP_ALIVE_HOLD
    max_lease: float | None = None  # the longest lease it grants (None: the server's --max-lease)
    order: str = TURNS  # "turns" across clients, or "arrival" order
    min_period: float = DEFAULT_MIN_PERIOD  # seconds between two polls of a watched reading
    readings: tuple[ReadingSpec, ...] = ()  # watched by the server itself, for /metrics

    def needs_restart(self, other: ModuleSpec) -> bool:
        """True if ``other`` differs in more than the options that apply at once."""
        live = {name: getattr(other, name) for name in LIVE_FIELDS}
        return dataclasses.replace(self, **live) != other


@dataclass(frozen=True)
class Config:
    """The usable entries of a config file, in file order, and what was skipped."""

    modules: tuple[ModuleSpec, ...] = ()
    problems: tuple[str, ...] = ()
    path: str | None = None
    base_dir: str = field(default_factory=os.getcwd)
    digest: bytes | None = None  # of the file's bytes, to watch it from what was read
    skipped: tuple[tuple[str, str], ...] = ()  # (name, why) of each entry skipped

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.modules]

    def get(self, name: str) -> ModuleSpec | None:
        for spec in self.modules:
            if spec.name == name:
                return spec
        return None

    def why_skipped(self, name: str) -> str | None:
        """Why entry ``name`` was skipped, or None if it was not."""
        return dict(self.skipped).get(name)


def read_config(path: str, python: str = sys.executable, which=shutil.which) -> Config:
    """Read and parse the config file at ``path``; ConfigError says why not."""
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from None
    base_dir = os.path.dirname(os.path.abspath(path))
    config = parse_config(text, base_dir, path=path, python=python, which=which)
    return dataclasses.replace(config, digest=content_digest(data))


def parse_config(
    text: str,
    base_dir: str,
    path: str | None = None,
    python: str = sys.executable,
    which: Callable[[str], str | None] = shutil.which,
) -> Config:
    """Parse config ``text``; relative paths in it resolve against ``base_dir``.

    ``python`` is the default interpreter; ``which`` finds a named one.
    """
    where = path or "config"
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a JSON object of modules")
    modules, skipped = [], []
    for name, value in raw.items():
        if name.startswith("_"):
            continue
        try:
            modules.append(_entry(name, value, base_dir, python, which))
        except _BadEntry as exc:
            skipped.append((name, str(exc)))
    problems = tuple(f'config entry "{name}" skipped: {why}' for name, why in skipped)
    return Config(tuple(modules), problems, path, base_dir, skipped=tuple(skipped))


def _entry(name, value, base_dir, python, which) -> ModuleSpec:
    if not name.strip():
        raise _BadEntry("the module name is empty")
    if isinstance(value, list):
        return _list_entry(name, value, python)
    if isinstance(value, dict):
        return _object_entry(name, value, base_dir, python, which)
    raise _BadEntry(
        "the value must be a list [import path, entry, dispatch or null] "
        f"or an object, not {_kind(value)}"
    )


def _list_entry(name, value, python) -> ModuleSpec:
    if len(value) != 3:
        raise _BadEntry(
            "the list must have 3 entries [import path, entry, dispatch or null], "
            f"found {len(value)}"
        )
    module, entry, dispatch = value
    return ModuleSpec(
        name=name,
        module=_text(module, "the import path"),
        entry=_text(entry, "the entry point"),
        dispatch=_optional_text(dispatch, "the dispatch method"),
        python=python,
    )


def _object_entry(name, value, base_dir, python, which) -> ModuleSpec:
    unknown = sorted(set(value) - set(_OPTIONS))
    if unknown:
        raise _BadEntry(f'unknown option "{unknown[0]}" (known: {", ".join(_OPTIONS)})')
    for required in ("module", "entry"):
        if required not in value:
            raise _BadEntry(f'the "{required}" option is missing')
    return ModuleSpec(
        name=name,
        module=_text(value["module"], '"module"'),
        entry=_text(value["entry"], '"entry"'),
        dispatch=_optional_text(value.get("dispatch"), '"dispatch"'),
        python=_python(value.get("python"), base_dir, python, which),
        cwd=_directory(value.get("cwd"), base_dir),
        env=_env(value.get("env")),
        timeout=_timeout(value.get("timeout")),
        queue_limit=_queue_limit(value.get("queue_limit", DEFAULT_QUEUE_LIMIT)),
        queue_share=_queue_share(value.get("queue_share")),
        queue_wait=_queue_wait(value.get("queue_wait", DEFAULT_QUEUE_WAIT)),
        watch=_watch(value.get("watch"), base_dir),
        allow=_allow(value.get("allow")),
        keep_alive_hold=_keep_alive_hold(value.get("keep_alive_hold", DEFAULT_KEEP_ALIVE_HOLD)),
        max_lease=_max_lease(value.get("max_lease")),
        order=_order(value.get("order", TURNS)),
        min_period=_min_period(value.get("min_period", DEFAULT_MIN_PERIOD)),
        readings=_readings(value.get("readings")),
    )


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _text(value, what) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _BadEntry(f"{what} must be a non-empty string, not {_kind(value)}")
    return value.strip()


def _optional_text(value, what) -> str | None:
    return None if value is None else _text(value, what)


def _python(value, base_dir, default, which) -> str:
    if value is None:
        return default
    value = _text(value, '"python"')
    if os.sep in value or (os.altsep and os.altsep in value):
        value = os.path.join(base_dir, value)
    found = which(value)
    if found is None:
        raise _BadEntry(f'the interpreter "{value}" was not found or is not executable')
    return os.path.abspath(found)


def _directory(value, base_dir) -> str | None:
    if value is None:
        return None
    return os.path.normpath(os.path.join(base_dir, _text(value, '"cwd"')))


def _env(value) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise _BadEntry('"env" must be an object of string values')
    return tuple(sorted(value.items()))


def _timeout(value) -> float | None:
    if value is None:
        return None
    if not positive_seconds(value):
        raise _BadEntry(f'"timeout" must be a positive number of seconds or null, not {value!r}')
    return float(value)


def _queue_limit(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _BadEntry(f'"queue_limit" must be a whole number >= 0, not {value!r}')
    return value


def _queue_share(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _BadEntry(f'"queue_share" must be a whole number >= 1 or null, not {value!r}')
    return value


def _queue_wait(value) -> float:
    if not positive_seconds(value):
        raise _BadEntry(f'"queue_wait" must be a positive number of seconds, not {value!r}')
    return float(value)


def _keep_alive_hold(value) -> float:
    if isinstance(value, bool) or (value != 0 and not positive_seconds(value)):
        raise _BadEntry(
            f'"keep_alive_hold" must be a number of seconds >= 0 (0: no limit), not {value!r}'
        )
    return float(value)


def _max_lease(value) -> float | None:
    if value is None:
        return None
    if not positive_seconds(value):
        raise _BadEntry(f'"max_lease" must be a positive number of seconds or null, not {value!r}')
    return float(value)


def _readings(value) -> tuple[ReadingSpec, ...]:
    if value is None:
        return ()
    example = '{"wavelength": {"function": "get_wavelength", "args": [], "every": 1}}'
    if not isinstance(value, Mapping):
        raise _BadEntry(f'"readings" must be an object like {example}')
    readings = []
    for name, reading in value.items():
        if not name or not isinstance(reading, Mapping) or "function" not in reading:
            raise _BadEntry(f'"readings" must be an object like {example}')
        function = _text(reading["function"], f'the function of reading "{name}"')
        args = reading.get("args", [])
        if not isinstance(args, list):
            raise _BadEntry(f'the "args" of reading "{name}" must be a list')
        every = reading.get("every", 1.0)
        if not positive_seconds(every):
            raise _BadEntry(
                f'the "every" of reading "{name}" must be a positive number of seconds, '
                f"not {every!r}"
            )
        unknown = sorted(set(reading) - {"function", "args", "every"})
        if unknown:
            raise _BadEntry(f'reading "{name}" has an unknown option "{unknown[0]}"')
        readings.append(ReadingSpec(name, function, json.dumps(args), float(every)))
    return tuple(readings)


def _min_period(value) -> float:
    if not positive_seconds(value):
        raise _BadEntry(f'"min_period" must be a positive number of seconds, not {value!r}')
    return float(value)


def _order(value) -> str:
    if value not in ORDERS:
        raise _BadEntry(f'"order" must be one of {", ".join(ORDERS)}, not {value!r}')
    return value


def _watch(value, base_dir) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise _BadEntry('"watch" must be a path or a list of paths')
    return tuple(os.path.normpath(os.path.join(base_dir, p)) for p in value)


def _allow(value) -> tuple[Rule, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _BadEntry(
            '"allow" must be a list of networks and cn:NAME entries, '
            'like ["10.0.1.0/24", "cn:alice"]'
        )
    try:
        return tuple(parse_rule(item) for item in value)
    except ValueError as exc:
        raise _BadEntry(f'"allow": {exc}') from None
