"""routes: binds a cloud route id to a driver.

A sensor route samples its driver, decides whether a reading is worth sending
(deadband, interval) and hands it to the outbox. A command route knows its
value type and safe level, checks a desired value and applies it.
"""
from firmware.io.report import Reporter


class SensorRoute:
    kind = "sensor"

    def __init__(self, route_id, cfg, driver):
        self.id = route_id
        self.name = cfg.get("name", route_id)
        self.driver = driver  # anything with read() -> value or None
        self.reporter = Reporter(cfg.get("deadband", 0), int(cfg.get("min_interval", 0) * 1000),
                                 int(cfg.get("interval", 10) * 1000))
        self.last_value = None
        self.last_ack = None

    def poll(self):
        """A value to report now, or None: a change beyond the deadband (not sooner than
        min_interval after the last report), and the current value every interval."""
        v = self.driver.read()
        if v is not None:
            self.last_value = v
        return self.reporter.offer(v)


class CommandRoute:
    kind = "command"

    def __init__(self, route_id, cfg, driver, value_type="boolean", lo=None, hi=None):
        self.id = route_id
        self.name = cfg.get("name", route_id)
        self.safe_level = cfg.get("safe", False)
        # Fail-safe lease: back to the safe level when the cloud has been out of reach
        # this long, or when the applied command's window has passed (0: no lease).
        self.lease_ms = int(cfg.get("lease", 0) * 1000)
        self.valid_until = None
        self.driver = driver  # already at its safe level
        self.value_type = value_type
        self.lo, self.hi = lo, hi
        self.last_ack = None

    def value(self):
        return self.driver.value()

    def check(self, value):
        """The value to apply, or raise ValueError saying why it is refused."""
        t = self.value_type
        if t == "boolean":
            if value is True or value is False:
                return value
            if type(value) is int and value in (0, 1):
                return value == 1
            raise ValueError("a boolean (or 0/1) is required")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("a number is required")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("a finite number is required")
        if t == "integer":
            if value != int(value):  # float.is_integer() is missing on MicroPython
                raise ValueError("an integer is required")
            value = int(value)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise ValueError("out of range [%s, %s]" % (self.lo, self.hi))
        return value

    def apply(self, value):
        self.driver.set(value)

    def make_safe(self):
        self.driver.set(self.safe_level)
