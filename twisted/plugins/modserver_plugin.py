"""The twistd plugin stub: ``twistd modserver`` (options live in modserver.server.tap)."""

from twisted.application.service import ServiceMaker

modserver = ServiceMaker(
    "modserver",
    "modserver.server.tap",
    "Lab hardware module server (ModuleServer compatible)",
    "modserver",
)
