"""The web side: the status page for people, ``/status.json`` and ``/metrics``.

What belongs here: the HTTP resources (``status``), the Prometheus text
(``metrics``) and the page's buttons (``controls``: restart, break a
lease, re-read the config).

What it may import: ``server.access`` (who may press a button),
``supervision``'s statistics and states, ``wire.errors``; the server hands
it what it shows.
"""
