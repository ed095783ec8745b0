"""A 1,000,000-float64 reply through Pyro5 and RPyC, beside modserver, in one run.

Run it with a Python that has Pyro5, rpyc and numpy (a venv of its own:
they are not modserver's dependencies), pointing at modserver's twistd:

    python -m venv rpc-venv && rpc-venv/bin/pip install Pyro5 rpyc numpy
    rpc-venv/bin/python benchmarks/others.py --twistd .venv/bin/twistd

Each server runs in a process of its own on 127.0.0.1 and makes the array
once; each client call ends with a numpy array in hand.  Pyro5 and RPyC are
measured the ways their users would move an array: as a list of floats
(Pyro5's default serializer, serpent, cannot send a numpy array; RPyC
passes a tuple by value) and as the array's bytes (tobytes, then
numpy.frombuffer).  modserver is measured with its Client (binary
segments) and with binary=False (JSON).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

N = 1_000_000

PYRO_SERVER = textwrap.dedent(
    """
    import sys, numpy, Pyro5.api
    ARRAY = numpy.arange(N, dtype=numpy.float64)
    @Pyro5.api.expose
    class Bench:
        def as_list(self):
            return ARRAY.tolist()
        def as_bytes(self):
            return ARRAY.tobytes()
    daemon = Pyro5.api.Daemon(host="127.0.0.1")
    print(daemon.register(Bench, "bench"), flush=True)
    daemon.requestLoop()
    """.replace("N,", f"{N},")
)

RPYC_SERVER = textwrap.dedent(
    """
    import numpy, rpyc
    from rpyc.utils.server import OneShotServer, ThreadedServer
    ARRAY = numpy.arange(N, dtype=numpy.float64)
    class Bench(rpyc.Service):
        def exposed_as_tuple(self):
            return tuple(ARRAY.tolist())
        def exposed_as_bytes(self):
            return ARRAY.tobytes()
    server = ThreadedServer(Bench, hostname="127.0.0.1", port=0,
                            protocol_config={"allow_public_attrs": True})
    print(server.port, flush=True)
    server.start()
    """.replace("N,", f"{N},")
)

BENCH_MODULE = textwrap.dedent(
    """
    import numpy
    ARRAY = numpy.arange(N, dtype=numpy.float64)
    class Bench:
        def array(self):
            return ARRAY
    """.replace("N,", f"{N},")
)


def median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    assert isinstance(result, numpy.ndarray) and result.shape == (N,) and result[-1] == N - 1
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twistd", required=True, help="modserver's twistd script")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    import Pyro5.api
    import rpyc

    from modserver.client import Client

    results = {}
    pyro = subprocess.Popen([sys.executable, "-c", PYRO_SERVER], stdout=subprocess.PIPE, text=True)
    rpc = subprocess.Popen([sys.executable, "-c", RPYC_SERVER], stdout=subprocess.PIPE, text=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench_array.py").write_text(BENCH_MODULE)
        (Path(tmp) / "server.config").write_text('{"bench": ["bench_array", "Bench", null]}')
        log = Path(tmp) / "server.log"
        modserver = subprocess.Popen(
            [str(Path(args.twistd).resolve()), "-n", "--pidfile=", "modserver",
             "--config", "server.config", "--listen", "tcp:0:interface=127.0.0.1",
             "--log-level", "warn"],
            cwd=tmp, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            uri = pyro.stdout.readline().strip()
            rpyc_port = int(rpc.stdout.readline())
            import re

            deadline = time.monotonic() + 60
            while not re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text()):
                assert time.monotonic() < deadline, "modserver did not start"
                time.sleep(0.05)
            port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text()).group(1))
            binary = Client("127.0.0.1", port, timeout=60)
            plain = Client("127.0.0.1", port, timeout=60, binary=False)
            deadline = time.monotonic() + 60
            while binary.status("bench")["modules"]["bench"]["state"] != "ready":
                assert time.monotonic() < deadline, "the bench module did not start"
                time.sleep(0.05)

            def pyro_call(name):
                with Pyro5.api.Proxy(uri) as proxy:
                    return getattr(proxy, name)()

            def pyro_bytes():
                import serpent

                return numpy.frombuffer(serpent.tobytes(pyro_call("as_bytes")), numpy.float64)

            def rpyc_call(name):
                conn = rpyc.connect("127.0.0.1", rpyc_port)
                try:
                    return getattr(conn.root, name)()
                finally:
                    conn.close()

            ways = {
                "modserver, binary segments": lambda: binary.com("bench", "array"),
                "modserver, JSON": lambda: numpy.array(plain.com("bench", "array")),
                "Pyro5, list (serpent)": lambda: numpy.array(pyro_call("as_list")),
                "Pyro5, bytes (serpent)": pyro_bytes,
                "RPyC, tuple by value": lambda: numpy.array(rpyc_call("as_tuple")),
                "RPyC, bytes": lambda: numpy.frombuffer(rpyc_call("as_bytes"), numpy.float64),
            }
            for name, fn in ways.items():
                results[name] = median_time(fn, args.repeat)
        finally:
            for process in (pyro, rpc, modserver):
                process.terminate()
                process.wait(30)
    fastest = results["modserver, binary segments"]
    print(f"{'1,000,000 float64, a new connection a call':<44}{'median':>10}{'vs binary':>12}")
    for name, seconds in results.items():
        print(f"{name:<44}{seconds * 1e3:>8.1f} ms{seconds / fastest:>11.1f}x")


if __name__ == "__main__":
    main()
