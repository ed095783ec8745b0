"""``/metrics``: the server's numbers in Prometheus's text format (prometheus_client).

Nothing is counted here: a collector reads the server's state when
Prometheus scrapes, from the same ``ModuleStats`` and snapshots that
``_status`` shows, so the two can never disagree and no call pays for a
second set of counters.  docs/operating.md lists the metrics.
"""

from __future__ import annotations

import math

from prometheus_client import exposition
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from modserver.supervision.lifecycle import State

# A module whose worker can take a call now, or has one.
UP_STATES = (State.READY.value, State.BUSY.value)


class ServerCollector(Collector):
    """The server's metrics at scrape time, for the modules ``who`` may use."""

    def __init__(self, server, who=None) -> None:
        self.server = server
        self.who = who

    def collect(self):
        """Every metric family, read from the server now."""
        status = self.server.status(None, self.who)
        yield from self._server_families(status["server"])
        yield from self._module_families(status["modules"])
        yield from self._reading_families(status["modules"])

    def _reading_families(self, modules: dict):
        """The config's readings: numeric values, and when each was last read well."""
        value = GaugeMetricFamily(
            "modserver_reading",
            "The last good value of a reading named in the config (numeric readings only).",
            labels=["module", "reading"],
        )
        when = GaugeMetricFamily(
            "modserver_reading_last_good_time_seconds",
            "When the reading was last read without an error, in seconds since the Unix epoch.",
            labels=["module", "reading"],
        )
        errors = CounterMetricFamily(
            "modserver_reading_errors",
            "Polls of the reading that ended in an error.",
            labels=["module", "reading"],
        )
        for module, facts in modules.items():
            for reading in facts.get("readings", []):
                name = reading.get("name")
                if name is None:
                    continue  # watched by clients only: not a dashboard's reading
                errors.add_metric([module, name], reading["errors"])
                if reading["time"] is not None:
                    when.add_metric([module, name], reading["time"])
                number = reading["value"]
                if isinstance(number, int | float) and not isinstance(number, bool):
                    value.add_metric([module, name], float(number))
        yield from (value, when, errors)

    def _server_families(self, facts: dict):
        info = InfoMetricFamily("modserver", "This server's name and modserver's version.")
        info.add_metric([], {"name": facts["name"], "version": facts["version"]})
        yield info
        yield GaugeMetricFamily(
            "modserver_start_time_seconds",
            "When the server started, in seconds since the Unix epoch.",
            value=self.server.reactor.seconds() - facts["uptime"],
        )
        yield GaugeMetricFamily(
            "modserver_config_valid",
            "1 when the config file on disk is the one running, 0 while it is missing or invalid.",
            value=0 if facts.get("config_error") else 1,
        )
        connections = self.server.connections
        yield GaugeMetricFamily(
            "modserver_client_connections",
            "Client connections open now (not the status page's).",
            value=connections.open,
        )
        yield CounterMetricFamily(
            "modserver_client_connections_accepted",
            "Client connections accepted since the server started.",
            value=connections.accepted,
        )

    def _module_families(self, modules: dict):
        calls = CounterMetricFamily(
            "modserver_calls",
            "Calls answered, by module and outcome (ok, error, timeout, died, refused).",
            labels=["module", "outcome"],
        )
        durations = HistogramMetricFamily(
            "modserver_call_duration_seconds",
            "Time from a call's arrival to the end of its reply (calls that ran).",
            labels=["module"],
        )
        restarts = CounterMetricFamily(
            "modserver_worker_restarts",
            "Workers replaced, by module and cause (died, spawn, timeout, reload, files, config).",
            labels=["module", "cause"],
        )
        up = GaugeMetricFamily(
            "modserver_worker_up",
            "1 while the module's worker is ready or busy with a call.",
            labels=["module"],
        )
        state = GaugeMetricFamily(
            "modserver_module_state",
            "1 for the module's current lifecycle state, 0 for the others.",
            labels=["module", "state"],
        )
        depth = GaugeMetricFamily(
            "modserver_queue_depth", "Calls waiting for the module.", labels=["module"]
        )
        limit = GaugeMetricFamily(
            "modserver_queue_limit",
            "Calls that may wait for the module before more are refused.",
            labels=["module"],
        )
        timeout = GaugeMetricFamily(
            "modserver_call_timeout_seconds",
            "The module's call timeout (modules with one only).",
            labels=["module"],
        )
        leased = GaugeMetricFamily(
            "modserver_lease_held",
            "1 while a client holds the module's lease, labelled with who.",
            labels=["module", "holder"],
        )
        lease_left = GaugeMetricFamily(
            "modserver_lease_seconds_left",
            "Seconds left on the module's lease (modules leased now only).",
            labels=["module"],
        )
        waiting = GaugeMetricFamily(
            "modserver_queue_waiting",
            "Calls waiting for the module, by client identity (address or cn:NAME).",
            labels=["module", "client"],
        )
        for name, module in modules.items():
            lease = module["lease"]
            if lease is not None:
                leased.add_metric([name, lease["holder"]], 1)
                lease_left.add_metric([name], lease["seconds_left"])
            for client, count in module["waiting_by_client"].items():
                waiting.add_metric([name, client], count)
            numbers = self.server.module(name).stats
            for outcome, count in module["outcomes"].items():
                calls.add_metric([name, outcome], count)
            durations.add_metric(
                [name],
                [(_le(bound), count) for bound, count in numbers.cumulative_buckets()],
                sum_value=numbers.latency_sum,
            )
            for cause, count in numbers.restarts_by_cause.items():
                restarts.add_metric([name, cause], count)
            up.add_metric([name], 1 if module["state"] in UP_STATES else 0)
            for each in State:
                state.add_metric([name, each.value], 1 if module["state"] == each.value else 0)
            depth.add_metric([name], module["queue"])
            limit.add_metric([name], module["queue_limit"])
            if module["timeout"] is not None:
                timeout.add_metric([name], module["timeout"])
        yield from (calls, durations, restarts, up, state, depth, limit, timeout)
        yield from (leased, lease_left, waiting)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else floatToGoString(bound)


def render(server, who, accept: str | None) -> tuple[bytes, str]:
    """The metrics ``who`` may see, in the format ``accept`` asks for: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server, who))
    ProcessCollector(registry=registry)  # process_*: the server process itself (Linux)
    encode, content_type = exposition.choose_encoder(accept or "")
    return encode(registry), content_type
