"""A pretend tunable laser: state that lives as long as the worker."""

import logging

logger = logging.getLogger(__name__)


class Laser:
    """A simulated laser with a wavelength and an emission switch."""

    def __init__(self):
        self._wavelength = 780.0
        self._on = False
        logger.info("laser connected")

    def wavelength(self):
        """The wavelength in nm."""
        return self._wavelength

    def set_wavelength(self, nm):
        """Tune to nm (between 700 and 1000)."""
        if not 700 <= nm <= 1000:
            raise ValueError(f"{nm} nm is outside the tuning range 700-1000 nm")
        self._wavelength = float(nm)
        return self._wavelength

    def on(self):
        """Start emission."""
        self._on = True
        return self._on

    def off(self):
        """Stop emission."""
        self._on = False
        return self._on

    def status(self):
        """A dict of the laser's state."""
        return {"wavelength_nm": self._wavelength, "emitting": self._on}

    def __exit__(self, *exc_info):
        # Called when the worker stops (server shutdown, reload, config change).
        self._on = False
        logger.info("laser off and disconnected")
