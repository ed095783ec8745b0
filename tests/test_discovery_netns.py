"""Servers on two lab PCs find each other, for real: two network namespaces, a veth pair.

Each "PC" is a network namespace with its own address; real servers
(``twistd modserver``) announce themselves with python-zeroconf over
multicast DNS, and real clients (``modserver-client discover``, ``Lab``,
``AsyncLab``, the status page) run in the namespaces too.  Nothing here is
a mock, and nothing reaches the machine's real network.  Skipped where
namespaces cannot be made (not root, not Linux).
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from modserver.lab.announce import host_label
from tests.helpers import ServerProcess, modserver_command, wait_for
from tests.netns import LabNetwork

pytest.importorskip("zeroconf", reason="needs python-zeroconf: pip install '.[discovery]'")

HOST = host_label(socket.gethostname())  # both namespaces share the machine's name
ANNOUNCED = "announced on the lab network as"
WAVEMETER_PC = f"wavemeter-pc on {HOST}"
LASER_PC = f"laser-pc on {HOST}"
SHUTTER_PC = f"shutter-pc on {HOST}:36578"  # not on the usual port: the port is in the name

CONFIG_A = {
    "wavemeter": {"module": "whoami", "entry": "WhoAmI", "env": {"MODSERVER_TEST_VALUE": "A"}},
    "echo": ["basic", "Basic", None],
}
CONFIG_B = {"laser": ["basic", "Basic", None], "echo": ["basic", "Basic", None]}
CONFIG_SHUTTER = {"shutter": ["basic", "Basic", None]}


@pytest.fixture(scope="module")
def lab():
    reason = LabNetwork.unavailable()
    if reason:
        pytest.skip(f"two lab PCs need network namespaces: {reason}")
    try:
        network = LabNetwork().create()
    except RuntimeError as exc:
        pytest.skip(f"cannot make network namespaces here: {exc}")
    try:
        yield network
    finally:
        network.close()


def start_server(lab, host, directory, config, name, listen, *more, announced=True):
    """``twistd modserver`` inside ``host``'s namespace.

    It also listens on the namespace's own loopback, on a free port, which
    is where ServerProcess sees it start.
    """
    server = ServerProcess(directory, config)
    command = lab.command(
        host,
        *modserver_command(),
        "--config",
        str(server.config_path),
        "--name",
        name,
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        listen,
        *more,
    )
    server.start(command=command, wait_ready=False)
    if announced:
        try:
            wait_for(lambda: ANNOUNCED in server.log(), what=f"{name} to be announced")
        except BaseException:
            server.stop(signal.SIGKILL)
            raise
    return server


@pytest.fixture(scope="module")
def servers(lab, tmp_path_factory):
    """wavemeter-pc in namespace A (on its address), laser-pc in B (on every interface)."""
    a, b = lab.hosts
    page = ("--http", "tcp:8080:interface=0.0.0.0")
    one = start_server(
        lab,
        a,
        tmp_path_factory.mktemp("a"),
        CONFIG_A,
        "wavemeter-pc",
        f"tcp:36577:interface={lab.addresses[a]}",
        *page,
    )
    with one:
        two = start_server(
            lab, b, tmp_path_factory.mktemp("b"), CONFIG_B, "laser-pc", "tcp:36577", *page
        )
        with two:
            yield one, two


def client_command() -> list[str]:
    script = shutil.which("modserver-client")
    return [script] if script else [sys.executable, "-m", "modserver.client"]


def discover(lab, host: str, *options: str) -> subprocess.CompletedProcess:
    result = lab.run(host, *client_command(), *options, "discover")
    assert result.returncode == 0, result.stderr
    return result


def discovered(lab, host: str) -> dict[str, dict]:
    found = json.loads(discover(lab, host, "--json").stdout)
    return {entry["instance"]: entry for entry in found}


def lab_python(lab, host: str, code: str):
    """Run ``code`` in ``host``'s namespace; what it printed, as JSON."""
    result = lab.python(host, textwrap.dedent(code))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# discover ----------------------------------------------------------------------------


def test_discover_lists_both_servers_with_their_modules(lab, servers):
    a, b = lab.hosts
    found = discovered(lab, b)
    assert set(found) == {WAVEMETER_PC, LASER_PC}
    assert found[WAVEMETER_PC]["modules"] == ["wavemeter", "echo"]
    assert found[WAVEMETER_PC]["address"] == f"{lab.addresses[a]}:36577"
    assert found[WAVEMETER_PC]["status_page"] == f"http://{lab.addresses[a]}:8080/"
    assert found[LASER_PC]["modules"] == ["laser", "echo"]
    assert found[LASER_PC]["address"] == f"{lab.addresses[b]}:36577"
    assert found[LASER_PC]["name"] == "laser-pc" and found[LASER_PC]["version"]
    text = discover(lab, a).stdout
    assert f"{WAVEMETER_PC} at {lab.addresses[a]}:36577 (modserver " in text
    assert "  modules: laser, echo\n" in text
    assert f"note: echo is offered by 2 servers: {LASER_PC}, {WAVEMETER_PC}" in text


# Lab ------------------------------------------------------------------------------------


def test_lab_calls_a_module_on_the_other_namespaces_server(lab, servers):
    _, b = lab.hosts
    answers = lab_python(
        lab,
        b,
        """
        import json
        from modserver.client import Lab
        with Lab() as lab:
            wavemeter = lab.com("wavemeter", "facts")["env"]   # namespace A's server
            laser = lab.com("laser", "add", 2, 3)              # this namespace's own
            with lab.session("wavemeter") as session:
                again = session.facts()["env"]
        print(json.dumps([wavemeter, laser, again]))
        """,
    )
    assert answers == ["A", 5, "A"]


def test_the_async_lab_calls_a_module_on_the_other_namespaces_server(lab, servers):
    _, b = lab.hosts
    answer = lab_python(
        lab,
        b,
        """
        import json
        from twisted.internet import defer, task
        from modserver.async_client import AsyncLab

        async def main(reactor):
            lab = AsyncLab(reactor=reactor)
            try:
                facts = await lab.com("wavemeter", "facts")
            finally:
                await lab.close()
            print(json.dumps(facts["env"]))

        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
        """,
    )
    assert answer == "A"


def test_a_module_two_servers_offer_is_an_error_naming_both(lab, servers):
    a, b = lab.hosts
    error = lab_python(
        lab,
        b,
        """
        import json
        from modserver.client import Lab
        from modserver.lab.discovery import AmbiguousModule
        try:
            Lab().com("echo", "echo", 1)
        except AmbiguousModule as exc:
            print(json.dumps(str(exc)))
        """,
    )
    assert error.startswith("'echo' is offered by 2 servers: ")
    assert f"'{WAVEMETER_PC}' ({lab.addresses[a]}:36577)" in error
    assert f"'{LASER_PC}' ({lab.addresses[b]}:36577)" in error


# The status page ------------------------------------------------------------------------


def page(lab, host: str, url: str = "http://127.0.0.1:8080/?part=live") -> str:
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    )
    result = lab.python(host, code)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_each_status_page_links_to_the_other_servers_page(lab, servers):
    a, b = lab.hosts
    pages = [(a, b, "laser-pc", LASER_PC), (b, a, "wavemeter-pc", WAVEMETER_PC)]
    for here, there, name, other in pages:
        url = f"http://{lab.addresses[there]}:8080/"
        link = f'<a href="{url}">{other}</a>'
        wait_for(
            lambda here=here, link=link: link in page(lab, here),
            interval=0.5,
            what=f"{other} on the page",
        )
        # Followed from the other namespace, the link leads to that server's page.
        assert f"<title>{name}: modserver status</title>" in page(lab, here, url)


# Stopping ---------------------------------------------------------------------------------


def test_a_stopped_server_disappears_from_discover_within_10_s(lab, servers, tmp_path):
    a, b = lab.hosts
    started = time.monotonic()
    shutter = start_server(
        lab, a, tmp_path, CONFIG_SHUTTER, "shutter-pc", "tcp:36578", announced=False
    )
    with shutter:
        wait_for(lambda: SHUTTER_PC in discovered(lab, b), timeout=30, interval=0.1)
        print(f"shutter-pc appeared in discover {time.monotonic() - started:.2f} s after its start")
        stopped = time.monotonic()
    assert ANNOUNCED in shutter.log() and "withdrew the announcement" in shutter.log()
    wait_for(lambda: SHUTTER_PC not in discovered(lab, b), timeout=10, interval=0.1)
    print(f"shutter-pc left discover {time.monotonic() - stopped:.2f} s after its stop")
    # Other servers' pages drop it too, on its goodbye.
    wait_for(lambda: SHUTTER_PC not in page(lab, b), timeout=10, interval=0.5)


class Interactive:
    """A Python process in a namespace, asked one JSON line at a time."""

    SCRIPT = textwrap.dedent(
        """
        import json, sys
        from modserver.client import Lab
        lab = Lab()
        for line in sys.stdin:
            try:
                answer = {"response": lab.com(*json.loads(line))}
            except Exception as exc:
                answer = {"error": type(exc).__name__, "reason": str(exc)}
            print(json.dumps(answer), flush=True)
        """
    )

    def __init__(self, lab, host: str) -> None:
        self.process = subprocess.Popen(
            lab.command(host, sys.executable, "-c", self.SCRIPT),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def ask(self, *call) -> dict:
        self.process.stdin.write(json.dumps(call) + "\n")
        self.process.stdin.flush()
        return json.loads(self.lines.get(timeout=60))

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def test_lab_looks_again_when_the_server_leaves_or_moves(lab, servers, tmp_path):
    a, b = lab.hosts
    asking = Interactive(lab, b)
    (tmp_path / "1").mkdir()
    try:
        first = start_server(lab, a, tmp_path / "1", CONFIG_SHUTTER, "shutter-pc", "tcp:36578")
        with first:
            assert asking.ask("shutter", "add", 1, 1) == {"response": 2}
        # Stopped: its goodbye (or, if that is not in yet, the failed call) drops the answer.
        wait_for(
            lambda: asking.ask("shutter", "add", 1, 1).get("error") == "ModuleNotFound",
            timeout=10,
            interval=0.2,
            what="Lab to find no shutter",
        )
        # Back on another port: Lab finds it there.
        (tmp_path / "2").mkdir()
        moved = start_server(lab, a, tmp_path / "2", CONFIG_SHUTTER, "shutter-pc", "tcp:36579")
        with moved:
            assert asking.ask("shutter", "add", 2, 2) == {"response": 4}
            # Killed, so no goodbye: the call fails, and the next one looks again.
            moved.stop(signal.SIGKILL)
            assert asking.ask("shutter", "add", 2, 2)["error"] == "ConnectionFailed"
            gone = asking.ask("shutter", "add", 2, 2)
            assert gone["error"] == "ModuleNotFound"
            assert f"'shutter-pc on {HOST}:36579' (not answering: " in gone["reason"]
    finally:
        asking.close()


# Without zeroconf ------------------------------------------------------------------------


def test_without_zeroconf_the_default_logs_one_line_and_serves(lab, tmp_path):
    a, _ = lab.hosts
    server = ServerProcess(tmp_path, CONFIG_SHUTTER)
    blocked = (
        "import sys; sys.modules['zeroconf'] = None; sys.argv[0] = 'twistd'; "
        "from twisted.scripts.twistd import run; run()"
    )
    command = lab.command(
        a,
        sys.executable,
        "-c",
        blocked,
        "-n",
        "--pidfile=",
        "modserver",
        "--config",
        str(server.config_path),
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "tcp:36590",
    )
    with server.start(command=command, wait_ready=False):
        wait_for(lambda: "[shutter#info] ready" in server.log(), what="the module to be ready")
        lines = [line for line in server.log().splitlines() if "python-zeroconf" in line]
        assert len(lines) == 1
        assert "not announced on the lab network: python-zeroconf is not installed" in lines[0]
        assert "pip install '.[discovery]'" in lines[0]
        assert server.process.poll() is None


def test_two_servers_of_one_name_on_one_computer_are_told_apart_by_port(lab, servers, tmp_path):
    a, b = lab.hosts
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    first = start_server(lab, a, tmp_path / "1", CONFIG_SHUTTER, "shutter-pc", "tcp:36578")
    with first:
        second = start_server(lab, a, tmp_path / "2", CONFIG_SHUTTER, "shutter-pc", "tcp:36579")
        with second:
            found = discovered(lab, b)
            assert found[SHUTTER_PC]["port"] == 36578
            assert found[f"shutter-pc on {HOST}:36579"]["port"] == 36579


def test_discover_without_a_network_says_why(lab):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare")
    # A network namespace of its own, with nothing in it: no interface is up.
    result = subprocess.run(
        ["unshare", "--net", *client_command(), "discover"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr.startswith(
        "error: cannot speak multicast DNS on this computer's network interfaces: "
    )


def test_lab_finds_and_calls_a_module_served_only_over_mutual_tls(lab, servers, tmp_path):
    trustme = pytest.importorskip("trustme")
    a, b = lab.hosts
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert(lab.addresses[a]).private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    alice = ca.issue_cert("alice.lab.example", common_name="alice")
    alice.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "alice.pem"))
    (tmp_path / "vault").mkdir()
    listen = (
        f"mtls:36581:interface={lab.addresses[a]}:certKey={tmp_path / 'server.pem'}"
        f":caCerts={tmp_path / 'ca.pem'}"
    )
    vault = {"vault": ["basic", "Basic", None]}
    with start_server(lab, a, tmp_path / "vault", vault, "vault-pc", listen, "--allow", "cn:*"):
        found = lab_python(
            lab,
            b,
            f"""
            import json
            from modserver.client import Lab
            ca, mine = {str(tmp_path / "ca.pem")!r}, {str(tmp_path / "alice.pem")!r}
            with Lab(tls_ca=ca, tls_cert=mine) as lab:
                print(json.dumps([lab.com("vault", "add", 20, 22), lab.client("vault").port]))
            """,
        )
        assert found == [42, 36581]
        plain = discovered(lab, b)[f"vault-pc on {HOST}:36581"]
        assert plain["modules"] is None and "give the client TLS files" in plain["error"]
