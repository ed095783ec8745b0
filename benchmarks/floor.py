"""The floor: the least a server of the same protocol can do, for comparison.

One process, standard library only: a thread per connection, the modules'
instances in the server process itself (no worker, no isolation, no
restarts), one lock per module so calls to a module still run one at a
time, and urllib + json as the codec.  modserver's figures are reported as
ratios to this one's, measured in the same run.

    python benchmarks/floor.py PORT MODULE_FILE:Class[:name] ...
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import socketserver
import sys
import threading
import urllib.parse

MODULES: dict[str, tuple[object, threading.Lock]] = {}


def load(spec: str) -> None:
    path, entry, *name = spec.split(":")
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    MODULES[name[0] if name else entry] = (getattr(module, entry)(), threading.Lock())


class Handler(socketserver.StreamRequestHandler):
    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def read(self):
        line = self.rfile.readline()
        if not line:
            return None
        return json.loads(urllib.parse.unquote_plus(line.decode("utf-8").rstrip("\r\n")))

    def reply(self, response, error=False, traceback="") -> None:
        text = json.dumps({"response": response, "error": error, "traceback": traceback})
        self.wfile.write(urllib.parse.quote_plus(text).encode("ascii") + b"\n")

    def handle(self) -> None:
        hello = self.read()
        name = hello.get("name") if hello else None
        if name in (None, "_ping"):
            self.reply(list(self.client_address))
            return
        if name not in MODULES:
            self.reply(f"BadRequest: {name} does not exist (case matters)", True, "-")
            return
        instance, lock = MODULES[name]
        self.reply("ack")
        while True:
            request = self.read()
            if request is None or request.get("function") is None:
                return
            try:
                with lock:
                    result = getattr(instance, request["function"])(*request.get("args", []))
            except Exception as exc:  # the module's error: one line and a traceback
                self.reply(f"{type(exc).__name__}: {exc}", True, repr(exc))
                return
            self.reply(result)
            if not request.get("keep_alive"):
                return


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main() -> None:
    port = int(sys.argv[1])
    for spec in sys.argv[2:]:
        load(spec)
    with Server(("127.0.0.1", port), Handler) as server:
        print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
