"""Fails to import: it needs a package that does not exist."""

import this_package_does_not_exist  # noqa: F401


class Broken:
    pass
