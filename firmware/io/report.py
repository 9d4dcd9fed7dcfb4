"""Which readings are worth sending (deadband, min and max interval). Shared by
the sensor routes and the Analog driver; small, so a route without a hardware
driver does not load the drivers module."""
from firmware.compat import ticks_diff, ticks_ms


class Reporter:
    """Which readings are worth sending: a move beyond ``deadband`` (any change for
    booleans) at least ``min_interval_ms`` after the last report, or any reading
    once ``max_interval_ms`` passed (a heartbeat). The first reading is reported."""

    def __init__(self, deadband=0, min_interval_ms=0, max_interval_ms=60000):
        self.deadband = deadband
        self.min_interval_ms, self.max_interval_ms = min_interval_ms, max_interval_ms
        self.last = None
        self._ms = 0

    def offer(self, v, now=None):
        if v is None:
            return None
        if now is None:
            now = ticks_ms()
        if self.last is not None:
            dt = ticks_diff(now, self._ms)
            if isinstance(v, bool) or isinstance(self.last, bool):
                moved = v != self.last
            else:
                moved = abs(v - self.last) > self.deadband
            if not (moved and dt >= self.min_interval_ms) and dt < self.max_interval_ms:
                return None
        self.last = v
        self._ms = now
        return v
