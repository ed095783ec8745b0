"""A module run without numpy (tests/test_e2e_binary.py hides it): what arrives."""


class RawArgs:
    def describe(self, value):
        return [
            type(value).__name__,
            getattr(value, "dtype", None),
            list(getattr(value, "shape", ())),
        ]

    def back(self, value):
        """Send an argument back as it came (a RawArray travels as its array)."""
        return value

    def has_numpy(self):
        try:
            import numpy  # noqa: F401
        except ImportError:
            return False
        return True
