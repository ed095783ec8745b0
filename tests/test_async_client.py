"""The async client in Twisted's reactor, against a real server in another process."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from modserver.async_client import AsyncClient, AsyncSession
from modserver.client import NETWORK_MARGIN, ConnectionFailed, ReplyTimeout, ServerError
from tests.helpers import ServerProcess, free_port

CONFIG = {"basic": ["basic", "Basic", None], "dispatcher": ["dispatcher", "Dispatcher", "handle"]}
BOUND = 15  # seconds any awaited result may take


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("async"), CONFIG).start() as srv:
        yield srv


@pytest.fixture
def lab(server):
    return AsyncClient("127.0.0.1", server.port, timeout=5)


def bounded(d: defer.Deferred) -> defer.Deferred:
    return d.addTimeout(BOUND, reactor)


@pytest_twisted.ensureDeferred
async def test_hellos(lab):
    ip, _ = await bounded(lab.ping())
    assert ip == "127.0.0.1"
    assert (await bounded(lab.help())).startswith("Available modules: basic, dispatcher")
    assert await bounded(lab.get_modules("d")) == ["dispatcher"]
    assert list((await bounded(lab.status("basic")))["modules"]) == ["basic"]
    assert await bounded(lab.reload("basic")) == 'Reloaded "basic"'
    assert await bounded(lab.reload()) == "Reloaded config"


@pytest_twisted.ensureDeferred
async def test_com(lab):
    assert await bounded(lab.com("basic", "add", 40, 2)) == 42
    assert (await bounded(lab.com("dispatcher", "F", 1)))["args"] == [1]
    assert "add(a, b)" in await bounded(lab.com("basic"))


@pytest_twisted.ensureDeferred
async def test_errors(lab):
    with pytest.raises(ServerError) as caught:
        await bounded(lab.com("basic", "boom", "async"))
    assert (
        caught.value.reason == "ValueError: async" and "raise ValueError" in caught.value.traceback
    )
    with pytest.raises(ServerError):
        await bounded(lab.reload("nope"))
    with pytest.raises(ReplyTimeout) as caught:
        await bounded(lab.com("basic", "sleep", 2, timeout=0.3))
    assert "within 0.3 s while waiting for basic.sleep()" in str(caught.value)
    assert "the client's timeout, which timeout= (of the AsyncClient" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_unreachable(lab):
    port = free_port()
    with pytest.raises(ConnectionFailed) as caught:
        await bounded(AsyncClient("127.0.0.1", port).ping())
    assert f"127.0.0.1:{port}" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_session(server, lab):
    session = await bounded(lab.session("basic"))
    assert isinstance(session, AsyncSession)
    first = await bounded(session.counter())
    second = await bounded(session.call("counter"))
    assert second == first + 1
    assert await bounded(session.pid()) == await bounded(session.pid())
    session.close()


@pytest_twisted.ensureDeferred
async def test_calls_run_concurrently_across_modules(lab):
    results = await bounded(
        defer.gatherResults(
            [
                lab.com("basic", "sleep", 0.5),
                lab.com("dispatcher", "x"),
                lab.com("basic", "add", 1, 1),
            ]
        )
    )
    assert results[0] == 0.5 and results[2] == 2


async def until(condition, what: str) -> None:
    """Poll ``condition()`` (a Deferred's result) until true, at most BOUND seconds."""
    deadline = reactor.seconds() + BOUND
    while not await condition():
        assert reactor.seconds() < deadline, f"timed out waiting for {what}"
        await task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_lease_in_async_with_is_renewed_and_released_on_an_exception(lab):
    first = None
    with pytest.raises(RuntimeError, match="scan failed"):
        async with lab.lease("basic", seconds=1.5, wait=2) as held:
            first = held.info["until_epoch"]

            async def renewed():
                return held.info["until_epoch"] > first

            await until(renewed, "a renewal")
            assert held.lost is None
            raise RuntimeError("scan failed")
    assert await bounded(lab.lease_request("show", "basic")) is None


@pytest_twisted.ensureDeferred
async def test_watch_as_an_async_iterator(lab):
    watch = lab.watch("basic", "add", 2, 3, every=0.1)
    got = []
    async for t, value in watch:
        got.append((t, value))
        if len(got) == 3:
            watch.close()
    assert [v for _, v in got] == [5, 5, 5] and got[0][0] < got[2][0]
    assert await bounded(watch.done) is None


@pytest_twisted.ensureDeferred
async def test_watch_with_a_callback_and_a_refused_watch(lab):
    got = []
    enough = defer.Deferred()

    def seen(t, value):
        got.append(value)
        if len(got) == 2 and not enough.called:
            enough.callback(None)

    watch = lab.watch("basic", "add", 1, 1, every=0.1, callback=seen)
    await bounded(enough)
    watch.close()
    assert got[:2] == [2, 2]
    refused = lab.watch("basic", "nope", every=0.1)
    with pytest.raises(ServerError, match="BadRequest: basic has no function"):
        await bounded(refused.__anext__())
    with pytest.raises(ServerError, match='BadRequest: "every"'):
        await bounded(lab.watch("basic", "add", 1, 1, every=-1).done)


@pytest.fixture(scope="module")
def timed_server(tmp_path_factory):
    config = {"pm": {"module": "lifecycle", "entry": "Life", "timeout": 3, "queue_wait": 20}}
    with ServerProcess(tmp_path_factory.mktemp("async-timed"), config).start() as srv:
        yield srv


@pytest_twisted.ensureDeferred
async def test_by_default_a_call_waits_for_the_servers_own_answer(timed_server):
    lab = AsyncClient("127.0.0.1", timed_server.port)
    assert lab.timeout is None
    with pytest.raises(ServerError) as caught:
        await bounded(lab.com("pm", "hang"))
    assert caught.value.reason.startswith("Timeout: pm.hang did not answer within 3 s")
    session = await bounded(lab.session("pm"))
    try:
        assert session.wait == 3 + 20 + NETWORK_MARGIN
        assert await bounded(session.sleep(0.1)) == 0.1  # the restarted worker
    finally:
        session.close()
    with pytest.raises(ReplyTimeout, match="within 0.3 s"):  # a timeout given wins
        await bounded(lab.com("pm", "sleep", 2, timeout=0.3))
    watch = lab.watch("pm", "sleep", 0.01, every=0.1)  # its hello too, without a timeout
    async for _, value in watch:
        assert value == 0.01
        watch.close()
    assert await bounded(watch.done) is None
