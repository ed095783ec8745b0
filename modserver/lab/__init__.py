"""The lab network: servers announcing themselves, clients finding them.

What belongs here: DNS-SD (``_modserver._tcp``) over multicast DNS: the
server's announcement (``announce``) and discovery for clients
(``discovery``, also behind ``modserver.client.Lab``).

What it may import: ``modserver.client`` and, for ``announce``, the
server's ``logs`` and ``listeners``; python-zeroconf when installed.
``discovery`` keeps Python 3.7 syntax, as the client does.
"""
