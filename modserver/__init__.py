"""modserver: a lab hardware server.

What users import stays here at the top: ``modserver.client`` (the blocking
client, also a file that runs on its own) and ``modserver.async_client``
(the client for Twisted programs). The rest lives in subpackages, each saying
in its docstring what belongs in it and what it may import:

- ``wire``: the formats everyone shares (client lines, binary segments, the
  server-worker frames, request checks, error replies); no I/O, no Twisted.
- ``net``: Twisted's side of the wire, for the server and the async client
  alike (long lines, prompt flushing, TLS endpoints).
- ``server``: the server process: ``twistd modserver``'s options, the
  service, client connections, access rules, the config, the log.
- ``supervision``: one module under the server: its worker process's life,
  and the flow of its calls (admission, turns, leases, watches, statistics).
- ``worker``: the worker child; standard library only.
- ``web``: the status page, ``/status.json`` and ``/metrics``.
- ``lab``: the lab network: announcing servers and finding them (DNS-SD).
- ``demo``: the modules the server serves when given no config.
"""

__version__ = "0.1.0"
