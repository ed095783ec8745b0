"""The ``mtls:`` server endpoint: TLS that admits only clients with a certificate.

Twisted's ``ssl:`` endpoint string serves TLS but cannot ask clients for a
certificate.  This one can, and is used like it::

    --listen mtls:36578:certKey=server.pem:privateKey=server.key:caCerts=lab-ca.pem

A client must show a certificate signed by one of the CAs in ``caCerts``
(a PEM file holding one or more certificates), or the handshake fails and
nothing it sent reaches the server.  Options:

    PORT (first)      the TCP port
    certKey           the server's certificate (PEM; it may also hold the key)
    privateKey        the server's private key (PEM; default: certKey's file)
    caCerts           the CA certificates that sign client certificates (required)
    extraCertChain    intermediate certificates to send along with the server's
    interface         the address to listen on (default: every IPv4 address;
                      "::" for IPv6 too)
    backlog           the listen queue length (default 1024)

The twistd plugin in twisted/plugins/modserver_endpoints.py registers it.
"""

from __future__ import annotations

import re

from OpenSSL import SSL
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

PREFIX = "mtls"
DEFAULT_BACKLOG = 1024

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


# The file options of the ssl: and mtls: endpoint strings.
_FILE_OPTIONS = "certKey|privateKey|caCerts|extraCertChain|dhParameters|caCertsDir"
_WINDOWS_FILE = re.compile(
    rf"(?P<option>(?:^|(?<=:))(?:{_FILE_OPTIONS})=)(?P<drive>[A-Za-z]):(?P<rest>[\\/][^:]*)"
)


def windows_paths_escaped(description: str) -> str:
    """``description`` with Windows paths in file options escaped for Twisted.

    In endpoint strings ``:`` separates options and ``\\`` escapes the next
    character, so ``certKey=C:\\certs\\server.pem``, as Windows users write
    it, would be cut at the drive's colon.  An option naming a file whose
    value starts with a drive (``C:\\`` or ``C:/``) is escaped here
    (``C\\:\\\\certs\\\\server.pem``), up to the next ``:``; a value already
    escaped (``C\\:/certs/server.pem``) is left as it is.
    """

    def escaped(found: re.Match) -> str:
        rest = found["rest"].replace("\\", "\\\\")
        return f"{found['option']}{found['drive']}\\:{rest}"

    return _WINDOWS_FILE.sub(escaped, description)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


def pem_certificates(data: bytes, path: str) -> list:
    """The certificates in PEM ``data`` (read from ``path``), as Twisted Certificates."""
    found = [ssl.Certificate.loadPEM(block) for block in _PEM_CERTIFICATE.findall(data)]
    if not found:
        raise ValueError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return found


def certificate_options(cert_path: str, key_path: str, ca_path: str, chain_path: str | None = None):
    """Twisted's CertificateOptions for a server that requires client certificates."""
    cert_data = _read(cert_path, "certKey")
    key_data = cert_data if key_path == cert_path else _read(key_path, "privateKey")
    try:
        server = ssl.PrivateCertificate.loadPEM(cert_data + b"\n" + key_data)
    except Exception as exc:
        raise ValueError(f"cannot load the server certificate and key: {exc}") from None
    authorities = pem_certificates(_read(ca_path, "caCerts"), ca_path)
    chain = []
    if chain_path:
        found = pem_certificates(_read(chain_path, "extraCertChain"), chain_path)
        chain = [certificate.original.to_cryptography() for certificate in found]
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original.to_cryptography_key(),
        certificate=server.original.to_cryptography(),
        extraCertChain=chain or None,
        trustRoot=ssl.trustRootFromCertificates(authorities),
    )


def is_tls_error(failure) -> bool:
    """True if a connection ended on a TLS error (a refused handshake, say)."""
    return failure is not None and failure.check(SSL.Error) is not None


def tls_reason(error) -> str:
    """OpenSSL's reasons in a TLS error, for people: "certificate verify failed"."""
    details = error.args[0] if error.args else None
    if isinstance(details, list) and details and all(isinstance(d, tuple) for d in details):
        return "; ".join(str(d[-1]) for d in details)
    return str(error)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """Parses ``mtls:PORT:certKey=...:privateKey=...:caCerts=...`` endpoint strings."""

    prefix = PREFIX

    def parseStreamServer(self, reactor, *args, **kwargs):  # noqa: N802 - Twisted's name
        """Build the endpoint; ValueError says what is missing or wrong."""
        return self._endpoint(reactor, *args, **kwargs)

    def _endpoint(
        self,
        reactor,
        port: str,
        certKey: str | None = None,  # noqa: N803 - the ssl: endpoint's spelling
        privateKey: str | None = None,  # noqa: N803
        caCerts: str | None = None,  # noqa: N803
        extraCertChain: str | None = None,  # noqa: N803
        interface: str = "",
        backlog: str = str(DEFAULT_BACKLOG),
    ):
        if not certKey:
            raise ValueError("mtls: needs certKey=SERVER_CERT.pem (and privateKey=KEY.pem)")
        if not caCerts:
            raise ValueError(
                "mtls: needs caCerts=CA.pem, the CA that signs client certificates "
                "(for TLS without client certificates use ssl:)"
            )
        options = certificate_options(certKey, privateKey or certKey, caCerts, extraCertChain)
        if ":" in interface:
            tcp = endpoints.TCP6ServerEndpoint(reactor, int(port), int(backlog), interface)
        else:
            tcp = endpoints.TCP4ServerEndpoint(reactor, int(port), int(backlog), interface)
        return endpoints.wrapServerTLS(options, tcp)
