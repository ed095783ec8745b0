"""The ``mtls:`` endpoint string (TLS requiring client certificates): see modserver.endpoints."""

from modserver.endpoints import MutualTLSServerParser

mtls = MutualTLSServerParser()
