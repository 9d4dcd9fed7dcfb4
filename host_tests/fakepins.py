"""Fake pins and buses for firmware/io/drivers.py (CPython and the MicroPython unix port).

Time is a FakeClock the test moves by hand; every write a fake records
carries the clock's time, and pins can share one `log` list so a test can
check the order of writes across pins (interlock: break before make).
"""


class FakeClock:
    """A ticks_ms stand-in: call it for the time, set `.t` or advance() to move it."""

    def __init__(self, t=0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, ms):
        self.t += ms
        return self.t


class FakePlainPin:
    """A pin without irq(): `level` is what value() reads; value(v) writes are
    recorded as (t, v). `log` (a list shared by several pins) gets (name, t, v)
    for every write."""

    def __init__(self, level=0, clock=None, name="pin", log=None):
        self.level = level
        self.clock = clock or FakeClock()
        self.name = name
        self.log = log
        self.writes = []
        self.reads = 0
        self.handler = None
        self.trigger = None
        self.pull = None

    def value(self, v=None):
        if v is None:
            self.reads += 1
            return self.level
        self.level = v
        t = self.clock()
        self.writes.append((t, v))
        if self.log is not None:
            self.log.append((self.name, t, v))
        return None

    def init(self, pull=None):
        self.pull = pull

    def set_level(self, level):
        """The outside world moves the line: an edge fires the irq handler."""
        edge = level != self.level
        self.level = level
        if edge and self.handler is not None:
            self.handler(self)


class FakePin(FakePlainPin):
    """A FakePlainPin with irq(): set_level() fires the handler on an edge."""

    def irq(self, handler=None, trigger=None):
        self.handler = handler
        self.trigger = trigger


class FakeADC:
    """read_u16() returns queued raw values in turn, then repeats the last one."""

    def __init__(self, *raw):
        self.queue = list(raw) or [0]
        self.reads = 0
        self.fail = None  # an exception to raise on the next read

    def feed(self, *raw):
        self.queue.extend(raw)

    def read_u16(self):
        if self.fail is not None:
            e, self.fail = self.fail, None
            raise e
        self.reads += 1
        return self.queue.pop(0) if len(self.queue) > 1 else self.queue[0]


class FakePWM:
    """Records every freq() and duty_u16() call."""

    def __init__(self):
        self.freqs = []
        self.duties = []

    def freq(self, f=None):
        if f is None:
            return self.freqs[-1] if self.freqs else 0
        self.freqs.append(f)

    def duty_u16(self, d=None):
        if d is None:
            return self.duties[-1] if self.duties else 0
        self.duties.append(d)


class FakeDHT:
    """A dht.DHT22 stand-in. fail("checksum") / fail("timeout") makes the next
    measure() fail as the stock driver does (plain Exception / OSError(110))."""

    def __init__(self, t=21.5, h=40.0):
        self.t, self.h = t, h
        self.measures = 0
        self._fail = None

    def fail(self, kind):
        self._fail = kind

    def measure(self):
        self.measures += 1
        kind, self._fail = self._fail, None
        if kind == "checksum":
            raise Exception("checksum error")
        if kind == "timeout":
            raise OSError(110)

    def temperature(self):
        return self.t

    def humidity(self):
        return self.h


class OneWireError(Exception):
    """Named like onewire.OneWireError (no presence pulse on the bus)."""


class FakeDS18X20:
    """A ds18x20.DS18X20 stand-in: `roms` is what scan() finds; `temps` are
    read_temp() results in turn (an exception instance is raised instead)."""

    def __init__(self, roms=None, temps=None):
        self.roms = [b"\x28\x01\x02\x03\x04\x05\x06\x07"] if roms is None else roms
        self.temps = list(temps or [21.0])
        self.scans = 0
        self.converts = 0
        self.reads = []

    def scan(self):
        self.scans += 1
        return list(self.roms)

    def convert_temp(self):
        self.converts += 1

    def read_temp(self, rom):
        self.reads.append(rom)
        t = self.temps.pop(0) if len(self.temps) > 1 else self.temps[0]
        if isinstance(t, Exception):
            raise t
        return t
