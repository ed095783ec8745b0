"""The twistd plugin stub: ``twistd modserver`` (options live in modserver.tap)."""

from twisted.application.service import ServiceMaker

modserver = ServiceMaker(
    "modserver",
    "modserver.tap",
    "Lab hardware module server (ModuleServer compatible)",
    "modserver",
)
