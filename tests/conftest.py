"""Test settings shared by every test module."""

import pytest
from hypothesis import HealthCheck, settings

from modserver.worker import platforms
from tests import wine

# Properties here are about values, never about speed: a per-example
# deadline only makes them fail on a busy machine (and then shrink for ages).
settings.register_profile("modserver", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("modserver")


def pytest_collection_modifyitems(config, items):
    """Under Wine (.ci/windows), skip what Wine cannot do, saying what (tests/wine.py)."""
    for item in items:
        reason = wine.skip_reason(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module", params=platforms.MODES)
def platform_mode(request):
    """The platform layer of the servers a test module starts: each module using
    this runs twice, on this system's own ("native") and on the portable one
    (the Windows logic that needs no Win32 API).  ``-k native`` or ``-k
    portable`` picks one.
    """
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "portable":
            patch.setenv(platforms.ENV_VAR, "portable")
        else:
            patch.delenv(platforms.ENV_VAR, raising=False)
        yield request.param


@pytest.fixture
def needs_children_ended(platform_mode):
    """Skip where nothing ends a worker's own child processes with it."""
    if platform_mode == "portable":
        pytest.skip(
            "portable mode has neither process groups nor Job Objects, so a worker's "
            "children outlive it (Windows' Job Objects: native mode, under Wine in .ci/windows)"
        )
