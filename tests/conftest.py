"""Test settings shared by every test module."""

from hypothesis import HealthCheck, settings

# Properties here are about values, never about speed: a per-example
# deadline only makes them fail on a busy machine (and then shrink for ages).
settings.register_profile("modserver", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("modserver")
