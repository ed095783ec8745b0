"""The ``mtls:`` endpoint string (TLS requiring client certificates).

See modserver.net.endpoints.
"""

from modserver.net.endpoints import MutualTLSServerParser

mtls = MutualTLSServerParser()
