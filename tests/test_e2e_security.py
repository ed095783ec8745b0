"""Safe on the lab network, with real processes and real TLS (a test CA from trustme).

On Linux all of 127.0.0.0/8 is this computer: a socket bound to 127.0.0.2
is "another client" for a server that admits only 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
import trustme
from twisted.internet import defer, reactor

from modserver.async_client import AsyncClient
from modserver.client import Client, ClientError, ConnectionFailed, ServerError
from tests.helpers import (
    Relay,
    ServerProcess,
    call,
    decode,
    encode,
    hello,
    needs_second_loopback,
    response,
    wait_for,
)

BASIC = ["basic", "Basic", None]
LIFE = ["lifecycle", "Life", None]
OTHER = "127.0.0.2"
BOUND = 15  # seconds any awaited result may take


def bounded(d: defer.Deferred) -> defer.Deferred:
    return d.addTimeout(BOUND, reactor)


@dataclass
class Pki:
    """A lab CA's files: the server's certificate and clients' certificates."""

    ca: Path
    server: Path  # certificate and key in one file
    clients: dict[str, tuple[Path, Path]]  # CN -> (certificate, key)
    rogue: tuple[Path, Path]  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="Test lab CA")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(where / "server.pem"))
    clients = {}
    for name in ("alice", "bob", "admin"):
        cert = ca.issue_cert(f"{name}.lab.example", common_name=name)
        cert.cert_chain_pems[0].write_to_path(str(where / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(where / f"{name}.key"))
        clients[name] = (where / f"{name}.pem", where / f"{name}.key")
    other = trustme.CA(organization_name="Somewhere else")
    rogue = other.issue_cert("mallory.example", common_name="alice")  # a stolen name
    rogue.cert_chain_pems[0].write_to_path(str(where / "rogue.pem"))
    rogue.private_key_pem.write_to_path(str(where / "rogue.key"))
    return Pki(
        where / "ca.pem", where / "server.pem", clients, (where / "rogue.pem", where / "rogue.key")
    )


def tls_port(srv: ServerProcess, kind: str) -> int:
    pattern = rf"listening on 127\.0\.0\.1:(\d+) \({kind}\)"
    match = wait_for(lambda: re.search(pattern, srv.log()), what=f"the {kind} listener")
    return int(match.group(1))


def mtls_listen(pki: Pki) -> tuple[str, str]:
    return (
        "--listen",
        f"mtls:0:interface=127.0.0.1:certKey={pki.server}:caCerts={pki.ca}",
    )


def tls_client(srv_port: int, pki: Pki, who: str | None = None, **options) -> Client:
    cert, key = pki.clients[who] if who else (None, None)
    return Client(
        "127.0.0.1",
        srv_port,
        timeout=10,
        tls_ca=str(pki.ca),
        tls_cert=cert and str(cert),
        tls_key=key and str(key),
        **options,
    )


def start(tmp_path, config, *args) -> ServerProcess:
    return ServerProcess(tmp_path, config, args).start()


# 1. TLS that is TLS ------------------------------------------------------------------------


def tls_session(
    port: int, pki: Pki, messages: list[bytes], who: str | None = None, source: str | None = None
) -> list[bytes]:
    """Send ``messages`` on one TLS connection; return the reply lines."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if who:
        context.load_cert_chain(*map(str, pki.clients[who]))
    where = (source, 0) if source else None
    with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=where) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            received = b""
            for message in messages:
                sock.sendall(message)
                while received.count(b"\n") < messages.index(message) + 1:
                    data = sock.recv(65536)
                    assert data, f"closed early; got {received!r}"
                    received += data
            return received.split(b"\n")[:-1]


@pytest.mark.parametrize("kind", ["TLS", "mutual TLS"])
def test_every_byte_after_the_handshake_is_encrypted(tmp_path, pki, kind):
    listen = (
        ("--listen", f"ssl:0:interface=127.0.0.1:privateKey={pki.server}:certKey={pki.server}")
        if kind == "TLS"
        else mtls_listen(pki)
    )
    who = "alice" if kind == "mutual TLS" else None
    with start(tmp_path, {"basic": BASIC}, *listen) as srv, Relay(tls_port(srv, kind)) as relay:
        for plain in (False, True):
            lines = tls_session(
                relay.port,
                pki,
                [
                    encode({"name": "basic"}, plain),
                    encode({"function": "add", "args": ["confidential-", "reading"]}, plain),
                ],
                who,
            )
            assert decode(lines[0], plain)["response"] == "ack"
            assert decode(lines[1], plain)["response"] == "confidential-reading"
        assert relay.seen[:1] == b"\x16"  # a TLS handshake record, from the first byte
        for secret in (b"confidential", b"reading", b"basic", b"add", b"function", b"ack"):
            assert secret not in relay.seen
            assert urllib.parse.quote_plus(secret).encode() not in relay.seen


# 2. Mutual TLS --------------------------------------------------------------------------------


def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(tmp_path, pki):
    with start(tmp_path, {"basic": BASIC}, *mtls_listen(pki)) as srv:
        port = tls_port(srv, "mutual TLS")
        with pytest.raises(ConnectionFailed, match="refused the TLS connection.*certificate"):
            tls_client(port, pki).com("basic", "add", 1, 2)
        rogue_cert, rogue_key = pki.rogue
        stranger = Client(
            "127.0.0.1",
            port,
            timeout=10,
            tls_ca=str(pki.ca),
            tls_cert=str(rogue_cert),
            tls_key=str(rogue_key),
        )
        with pytest.raises(ConnectionFailed, match="refused the TLS connection"):
            stranger.com("basic", "add", 1, 2)
        assert srv.module_status("basic")["calls_served"] == 0
        wait_for(
            lambda: "Refused: 127.0.0.1 failed the TLS handshake" in srv.log(),
            what="the refusal logged",
        )
        assert tls_client(port, pki, "alice").com("basic", "add", 1, 2) == 3


def test_a_client_verifies_the_servers_certificate(tmp_path, pki):
    elsewhere = trustme.CA()
    other_ca = tmp_path / "other-ca.pem"
    elsewhere.cert_pem.write_to_path(str(other_ca))
    with start(tmp_path, {"basic": BASIC}, *mtls_listen(pki)) as srv:
        cert, key = pki.clients["alice"]
        fooled = Client(
            "127.0.0.1",
            tls_port(srv, "mutual TLS"),
            timeout=10,
            tls_ca=str(other_ca),
            tls_cert=str(cert),
            tls_key=str(key),
        )
        with pytest.raises(ConnectionFailed, match="certificate of modserver at .* is not trusted"):
            fooled.ping()


# 3. The address allowlist ------------------------------------------------------------------


@needs_second_loopback
def test_clients_from_elsewhere_are_refused_in_the_encoding_they_spoke(tmp_path):
    with start(tmp_path, {"basic": BASIC}, "--allow", "127.0.0.1") as srv:
        for plain in (False, True):
            answer = hello(srv.port, "basic", plain=plain, source=OTHER)
            assert answer == {
                "response": "Forbidden: 127.0.0.2 may not use this server; "
                "the operator can admit it with --allow",
                "error": True,
                "traceback": answer["traceback"],
            }
            assert answer["traceback"]
        for _ in range(20):
            assert hello(srv.port, "_ping", source=OTHER)["error"] is True
        assert response(hello(srv.port, "_ping"))[0] == "127.0.0.1"
        log = srv.log()
        assert log.count("Refused: 127.0.0.2 may not use this server") == 1  # not once a try
        assert srv.module_status("basic")["calls_served"] == 0


def test_an_ipv6_allowlist_admits_ipv6_clients(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("this computer has no IPv6")
    args = ("--listen", "tcp6:0:interface=\\:\\:1", "--allow", "::1")
    with ServerProcess(tmp_path, {"basic": BASIC}, args).start(wait_ready=False) as srv:
        port = int(wait_for(lambda: re.search(r"listening on ::1:(\d+)", srv.log())).group(1))
        with socket.create_connection(("::1", port), timeout=10) as sock:
            sock.sendall(encode({"name": "_ping"}, True))
            assert decode(sock.makefile("rb").readline(), True)["response"][0] == "::1"
        answer = hello(srv.port, "_ping")  # 127.0.0.1 is not ::1
        assert answer["response"].startswith("Forbidden: 127.0.0.1 may not use this server")


# 4. Identities and per-module rules -------------------------------------------------------


def test_a_modules_allow_list_admits_only_the_certificate_names_it_gives(tmp_path, pki):
    config = {
        "open": BASIC,
        "secret": {"module": "basic", "entry": "Basic", "allow": ["cn:alice"]},
    }
    with start(tmp_path, config, *mtls_listen(pki)) as srv:
        port = tls_port(srv, "mutual TLS")
        alice, bob = tls_client(port, pki, "alice"), tls_client(port, pki, "bob")
        assert alice.com("secret", "add", 2, 3) == 5
        assert alice.get_modules() == ["open", "secret"]
        with pytest.raises(ServerError) as refused:
            bob.com("secret", "add", 2, 3)
        assert refused.value.reason == (
            "Forbidden: 127.0.0.1 (cn=bob) may not use secret; the operator can admit it in "
            'the "allow" list of its config entry'
        )
        assert bob.get_modules() == ["open"]
        assert bob.com("open", "add", 2, 3) == 5
        assert list(bob.status()["modules"]) == ["open"]
        plain = call(srv.port, "secret", "add", 2, 3)  # plain TCP: no certificate, no name
        assert plain["response"].startswith("Forbidden: 127.0.0.1 may not use secret")


@needs_second_loopback
def test_an_allow_list_edited_in_the_config_applies_without_restarting_the_module(tmp_path):
    config = {"mod": {"module": "basic", "entry": "Basic", "allow": ["127.0.0.1"]}}
    with start(tmp_path, config, "--allow", "loopback") as srv:
        pid = srv.module_status("mod")["pid"]
        assert call(srv.port, "mod", "add", 1, 1, source=OTHER)["response"].startswith(
            "Forbidden: 127.0.0.2 may not use mod"
        )
        srv.write_config({"mod": {"module": "basic", "entry": "Basic", "allow": ["loopback"]}})
        wait_for(
            lambda: call(srv.port, "mod", "add", 1, 1, source=OTHER)["error"] is False,
            what="the new allow list",
        )
        assert srv.module_status("mod")["pid"] == pid


# 5. Administrative operations ---------------------------------------------------------------


@needs_second_loopback
def test_reloads_are_for_administrators(tmp_path):
    with start(
        tmp_path, {"basic": BASIC}, "--allow", "loopback", "--admin-allow", "127.0.0.1"
    ) as srv:
        pid = srv.module_status("basic")["pid"]
        for name in ("_reload_", "_reload_basic"):
            answer = hello(srv.port, name, source=OTHER)
            assert answer["error"] is True
            assert answer["response"].startswith("Forbidden: 127.0.0.2 may not ")
            assert "--admin-allow" in answer["response"]
        assert srv.module_status("basic")["pid"] == pid
        assert response(hello(srv.port, "_reload_basic")) == 'Reloaded "basic"'
        assert response(hello(srv.port, "_reload_")) == "Reloaded config"
        assert srv.module_status("basic")["pid"] != pid


def test_an_administrators_certificate_name_allows_reloads(tmp_path, pki):
    args = (*mtls_listen(pki), "--admin-allow", "cn:admin")
    with start(tmp_path, {"basic": BASIC}, *args) as srv:
        port = tls_port(srv, "mutual TLS")
        with pytest.raises(ServerError) as refused:
            tls_client(port, pki, "alice").reload("basic")
        assert refused.value.reason.startswith("Forbidden: 127.0.0.1 (cn=alice) may not reload")
        assert tls_client(port, pki, "admin").reload("basic") == 'Reloaded "basic"'
        assert hello(srv.port, "_reload_basic")["response"].startswith(
            "Forbidden"
        )  # not loopback now


@needs_second_loopback
def test_a_short_timeout_from_a_non_administrator_leaves_the_worker_alive(tmp_path):
    args = ("--allow", "loopback", "--admin-allow", "127.0.0.1")
    with start(tmp_path, {"life": LIFE}, *args) as srv:
        pid = srv.module_status("life")["pid"]
        started = time.monotonic()
        answer = call(srv.port, "life", "sleep", 1.5, source=OTHER, timeout=0.2)
        assert time.monotonic() - started < 1.4
        assert answer["response"].startswith(
            "Timeout: life.sleep() did not answer within 0.2 s (the request's timeout)"
        )
        assert response(call(srv.port, "life", "pid", source=OTHER)) == pid  # after the sleep
        answer = call(srv.port, "life", "sleep", 1.5, timeout=0.2)  # an administrator's
        assert answer["response"].startswith("Timeout: life.sleep did not answer within 0.2 s")
        wait_for(lambda: srv.module_status("life")["pid"] not in (None, pid), what="a new worker")


# 6. The status page ---------------------------------------------------------------------


def http_get(port: int, host_header: str | None, source: str | None = None) -> tuple[int, bytes]:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0) if source else None
    ) as sock:
        head = "GET /status.json HTTP/1.1\r\n"
        if host_header is not None:
            head += f"Host: {host_header}\r\n"
        sock.sendall((head + "Connection: close\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@needs_second_loopback
def test_the_status_page_answers_only_its_own_names_and_admitted_clients(tmp_path):
    args = ("--http", "tcp:0:interface=127.0.0.1", "--allow", "127.0.0.1", "--http-host", "lab-pc")
    with start(tmp_path, {"basic": BASIC}, *args) as srv:
        match = wait_for(lambda: re.search(r"status page on http://127\.0\.0\.1:(\d+)/", srv.log()))
        port = int(match.group(1))
        for host in (f"127.0.0.1:{port}", "localhost", f"LAB-PC:{port}", f"[::1]:{port}", None):
            status, body = http_get(port, host)
            assert status == 200, host
            assert "basic" in json.loads(body)["modules"]
        status, body = http_get(port, "attacker.example")  # DNS rebinding sends its own name
        assert status == 421 and b"attacker.example" in body and b"--http-host" in body
        status, body = http_get(port, f"127.0.0.1:{port}", source=OTHER)
        assert status == 403 and body.startswith(b"Forbidden: 127.0.0.2 may not use this server")


# 7. Clients -----------------------------------------------------------------------------------


def test_the_python_client_speaks_mutual_tls(tmp_path, pki):
    with start(tmp_path, {"basic": BASIC}, *mtls_listen(pki)) as srv:
        lab = tls_client(tls_port(srv, "mutual TLS"), pki, "alice")
        assert lab.ping()[0] == "127.0.0.1"
        assert lab.get_modules() == ["basic"]
        assert lab.com("basic", "echo", "é", [1, 2]) == ["é", [1, 2]]
        with lab.session("basic") as basic:
            assert [basic.counter() for _ in range(3)] == [1, 2, 3]
        assert lab.status()["modules"]["basic"]["state"] in ("ready", "busy")


def test_the_command_line_client_speaks_mutual_tls(tmp_path, pki):
    with start(tmp_path, {"basic": BASIC}, *mtls_listen(pki)) as srv:
        cert, key = pki.clients["alice"]
        base = [
            sys.executable,
            "-m",
            "modserver.client",
            "--port",
            str(tls_port(srv, "mutual TLS")),
            "--host",
            "127.0.0.1",
            "--tls-ca",
            str(pki.ca),
        ]
        done = subprocess.run(
            [
                *base,
                "--tls-cert",
                str(cert),
                "--tls-key",
                str(key),
                "call",
                "basic",
                "add",
                "2",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (done.returncode, done.stdout) == (0, "7\n"), done.stderr
        refused = subprocess.run(
            [*base, "call", "basic", "add", "2", "5"], capture_output=True, text=True, timeout=30
        )
        assert refused.returncode == 3
        assert "refused the TLS connection" in refused.stderr


@pytest_twisted.ensureDeferred
async def test_the_async_client_speaks_mutual_tls(tmp_path, pki):
    with ServerProcess(tmp_path, {"basic": BASIC}, mtls_listen(pki)).start() as srv:
        cert, key = pki.clients["alice"]
        lab = AsyncClient(
            "127.0.0.1",
            tls_port(srv, "mutual TLS"),
            timeout=10,
            reactor=reactor,
            tls_ca=str(pki.ca),
            tls_cert=str(cert),
            tls_key=str(key),
        )
        assert await bounded(lab.com("basic", "add", 20, 22)) == 42
        session = await bounded(lab.session("basic"))
        assert await bounded(session.counter()) == 1
        session.close()
        stranger = AsyncClient(
            "127.0.0.1", tls_port(srv, "mutual TLS"), timeout=10, tls_ca=str(pki.ca)
        )
        with pytest.raises(ConnectionFailed, match="TLS"):
            await bounded(stranger.com("basic", "add", 1, 1))


# The recipe and the lab configuration of docs/operating.md --------------------------------


def recipe() -> str:
    """The shell block under "Making a lab CA and certificates" in docs/operating.md."""
    text = (Path(__file__).parent.parent / "docs" / "operating.md").read_text()
    section = text.split("### Making a lab CA and certificates", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def openssl_3() -> bool:
    try:
        done = subprocess.run(["openssl", "version"], capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    match = re.match(r"OpenSSL (\d+)\.", done.stdout)
    return bool(match) and int(match.group(1)) >= 3


@needs_second_loopback
@pytest.mark.skipif(not openssl_3(), reason="needs the openssl command, version 3 or newer")
def test_the_documented_recipe_and_lab_configuration_work(tmp_path):
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    script = recipe().replace("SERVER_IP=10.0.1.5", "SERVER_IP=127.0.0.1")
    subprocess.run(
        ["bash", "-e", "-c", script], cwd=pki_dir, check=True, capture_output=True, timeout=120
    )
    files = {name: pki_dir / name for name in ("lab-ca.pem", "server.pem", "server.key")}
    pki = Pki(
        files["lab-ca.pem"],
        files["server.pem"],
        {who: (pki_dir / f"{who}.pem", pki_dir / f"{who}.key") for who in ("alice", "bob")},
        (None, None),
    )
    args = (
        "--listen",
        f"mtls:0:interface=127.0.0.1:certKey={files['server.pem']}:privateKey={files['server.key']}"
        f":caCerts={files['lab-ca.pem']}",
        # 127.0.0.1 plays the MATLAB PCs' addresses; 127.0.0.2 is elsewhere.
        "--allow",
        "127.0.0.1",
        "--allow",
        "cn:*",
        "--admin-allow",
        "127.0.0.1",
        "--admin-allow",
        "cn:alice",
    )
    with start(tmp_path, {"basic": BASIC}, *args) as srv:
        port = tls_port(srv, "mutual TLS")
        assert tls_client(port, pki, "alice").reload("basic") == 'Reloaded "basic"'
        [refused] = tls_session(port, pki, [encode({"name": "_reload_basic"})], "bob", OTHER)
        assert decode(refused)["response"].startswith(
            "Forbidden: 127.0.0.2 (cn=bob) may not reload basic"
        )
        lines = tls_session(
            port,
            pki,
            [encode({"name": "basic"}), encode({"function": "add", "args": [2, 3]})],
            who="bob",
            source=OTHER,  # an address --allow does not list: bob's certificate admits him
        )
        assert decode(lines[1])["response"] == 5
        assert call(srv.port, "basic", "add", 2, 3, source=OTHER)["response"].startswith(
            "Forbidden: 127.0.0.2 may not use this server"
        )


def test_tls_mistakes_say_what_to_do(tmp_path, pki):
    with start(tmp_path, {"basic": BASIC}, *mtls_listen(pki)) as srv:
        port = tls_port(srv, "mutual TLS")
        with pytest.raises(ConnectionFailed, match="if that port serves TLS, give the client TLS"):
            Client("127.0.0.1", port, timeout=10).get_modules()  # plain, to the TLS port
        with pytest.raises(ConnectionFailed, match="that port does not speak TLS"):
            tls_client(srv.port, pki, "alice").get_modules()  # TLS, to the plain port
    cert, _ = pki.clients["alice"]
    with pytest.raises(ClientError, match="the TLS key file .*nope.key does not exist"):
        Client(
            "127.0.0.1", tls_ca=str(pki.ca), tls_cert=str(cert), tls_key=str(tmp_path / "nope.key")
        )
    with pytest.raises(ClientError, match="give it with tls_key="):
        Client("127.0.0.1", tls_ca=str(pki.ca), tls_cert=str(cert))  # its key is elsewhere


def test_a_certificate_for_another_name_is_said_so():
    from modserver.client import _tls_failure

    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = 62  # X509_V_ERR_HOSTNAME_MISMATCH
    error.verify_message = "Hostname mismatch, certificate is not valid for 'vm'."
    assert str(_tls_failure("vm:36578", error)).startswith(
        "the TLS certificate of modserver at vm:36578 does not name that host"
    )
