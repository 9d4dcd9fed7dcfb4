"""drivers: digital input, analog input, DHT, DS18B20, relay and PWM output.

No driver imports ``machine``, ``network`` or ``esp32``: the board module
creates the pins and buses and hands them over; tests hand over fakes
(``host_tests/fakepins.py``). Nothing here blocks the asyncio loop.

    from machine import ADC, Pin
    door = DigitalIn(Pin(4, Pin.IN, Pin.PULL_UP), debounce_ms=50, invert=True)
    adc = ADC(Pin(34), atten=ADC.ATTN_11DB)      # attenuation is the board's choice
    level = Analog(adc, scale=3.3 / 65535, deadband=0.02)
    pump = Relay(Pin(26, Pin.OUT, value=Relay.electrical(False, True)), safe=False)

Values for the cloud: DigitalIn -> bool, Analog -> float, DHT -> (t, h),
DS18B20 -> float, Relay -> bool, PWMOut -> number.
"""
import asyncio

from firmware.compat import const, log, ticks_add, ticks_diff, ticks_ms
from firmware.io.report import Reporter

_IRQ_BOTH = const(3)  # Pin.IRQ_RISING | Pin.IRQ_FALLING on MicroPython
_U16 = const(65535)
_CONV_MS = const(750)  # DS18B20 12-bit conversion time
_POWER_ON = const(85)  # DS18B20 scratchpad value before any conversion


class DigitalIn:
    """A debounced digital input: ``poll()`` returns the new stable value (after
    ``invert``) once a level has held ``debounce_ms``, else None; the first poll
    reports the initial value. With ``pin.irq`` the handler only flags an edge
    and its time, so a bounce between two polls restarts the timer; without it
    the driver just polls. ``pull`` is applied with ``pin.init(pull=...)``.
    ``clock`` (ticks_ms) is read by the handler and ``poll()``; tests fake it.
    """

    def __init__(self, pin, debounce_ms=50, invert=False, pull=None, clock=None):
        self.pin = pin
        self.debounce_ms = debounce_ms
        self.invert = bool(invert)
        self._clock = clock or ticks_ms
        self.stable = self._level = None  # last reported raw level; level being timed
        self._since = self._edge_ms = 0
        self._edge = False
        if pull is not None and hasattr(pin, "init"):
            pin.init(pull=pull)
        self.irq = hasattr(pin, "irq")
        if self.irq:
            pin.irq(handler=self._irq, trigger=_IRQ_BOTH)

    def _irq(self, _pin):
        # Interrupt context: no allocation, no work. poll() does the rest.
        self._edge_ms = self._clock()
        self._edge = True

    def poll(self, now=None):
        if now is None:
            now = self._clock()
        edge = self._edge
        if edge:
            self._edge = False
            edge_ms = self._edge_ms
        v = bool(self.pin.value())
        if self.stable is None:
            self.stable = self._level = v
            self._since = now
            return v != self.invert
        if edge:
            self._since = edge_ms  # it moved since the last poll: time from the last edge
        elif v != self._level:
            self._since = now
        self._level = v
        if v != self.stable and ticks_diff(now, self._since) >= self.debounce_ms:
            self.stable = v
            return v != self.invert
        return None

    def value(self):
        """The last stable value (bool), None before the first poll."""
        return None if self.stable is None else self.stable != self.invert


class Analog:
    """An averaged, scaled ADC reading with deadband and min/max report intervals.

    ``adc`` only needs ``read_u16()``. The board creates it with the
    attenuation for the input range (``ADC(pin, atten=ADC.ATTN_11DB)`` for
    0..~3.1 V on the ESP32); ``scale``/``offset`` turn 0..65535 into units.
    """

    def __init__(self, adc, samples=8, scale=1.0, offset=0.0, deadband=0.0,
                 min_interval_ms=1000, max_interval_ms=60000, decimals=2):
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.adc = adc
        self.samples = samples
        self.scale, self.offset = scale, offset
        self.decimals = decimals
        self.value = None  # latest reading
        self.reporter = Reporter(deadband, min_interval_ms, max_interval_ms)
        self.error = None

    def read(self):
        """One averaged, scaled reading, no reporting logic; None on OSError."""
        total = 0
        try:
            for _ in range(self.samples):
                total += self.adc.read_u16()
        except OSError as e:
            self.error = "read failed: %s" % e
            return None
        self.error = None
        self.value = round(total / self.samples * self.scale + self.offset, self.decimals)
        return self.value

    def poll(self, now=None):
        """A reading worth reporting (see Reporter), else None."""
        return self.reporter.offer(self.read(), now)

    @property
    def last(self):
        return self.reporter.last


def _dht_error(e):
    """The stock ``dht`` raises OSError(ETIMEDOUT) (no answer) or a plain
    Exception("checksum error"); anything else is a bug and is re-raised."""
    if isinstance(e, OSError):
        return "timeout"
    if "checksum" in str(e):
        return "checksum error"
    raise e


def _bus_error(e):
    """True for a 1-Wire failure: OSError, onewire.OneWireError, or ds18x20's
    plain Exception("CRC error"); anything else is re-raised."""
    if isinstance(e, OSError) or type(e).__name__ == "OneWireError" or "CRC" in str(e):
        return True
    raise e


class DHT:
    """A DHT11/DHT22 (``dht.DHT11(pin)``): ``read()`` -> (temperature, humidity) or None.

    The sensor needs ``min_interval_ms`` between measurements; before that
    ``read()`` returns the previous result. A failed measurement never
    raises: ``.error`` says "timeout" or "checksum error", ``.errors`` counts.
    """

    def __init__(self, sensor, min_interval_ms=2000):
        self.sensor = sensor
        self.min_interval_ms = min_interval_ms
        self.reading = None
        self.error = None
        self.errors = 0
        self._last_ms = None

    def read(self, now=None):
        if now is None:
            now = ticks_ms()
        if self._last_ms is not None and ticks_diff(now, self._last_ms) < self.min_interval_ms:
            return self.reading
        self._last_ms = now
        s = self.sensor
        try:
            s.measure()
            self.reading = (s.temperature(), s.humidity())
        except Exception as e:  # noqa: BLE001 - narrowed by _dht_error
            why = _dht_error(e)
            self.errors += 1
            self.reading = None
            if why != self.error:
                log("dht", why)
            self.error = why
            return None
        self.error = None
        return self.reading


class DS18B20:
    """One DS18B20 on a 1-Wire bus (``ds18x20.DS18X20(onewire.OneWire(pin))``).

    ``await read()`` starts a conversion, waits ``conv_ms`` without blocking
    the loop, and returns °C or None with ``.error`` set to "no sensor",
    "read failed" or "power-on value 85". With ``rom=None`` the first sensor
    found is used; after a failure it scans again (a replaced sensor has a
    new ROM).
    """

    def __init__(self, ds, rom=None, conv_ms=_CONV_MS):
        self.ds = ds
        self.rom = rom
        self._fixed = rom is not None
        self.conv_ms = conv_ms
        self.error = None
        self.errors = 0

    def _fail(self, why, detail=None):
        self.errors += 1
        if why != self.error:
            log("ds18b20", why if detail is None else "%s: %r" % (why, detail))
        self.error = why
        if not self._fixed:
            self.rom = None
        return None

    async def read(self):
        ds = self.ds
        try:
            if self.rom is None:
                roms = ds.scan()
                if not roms:
                    return self._fail("no sensor")
                self.rom = roms[0]
            ds.convert_temp()
        except Exception as e:  # noqa: BLE001 - narrowed by _bus_error
            _bus_error(e)
            return self._fail("read failed", e)
        await asyncio.sleep(self.conv_ms / 1000)  # never time.sleep: the loop runs on
        try:
            t = ds.read_temp(self.rom)
        except Exception as e:  # noqa: BLE001 - narrowed by _bus_error
            _bus_error(e)
            return self._fail("read failed", e)
        if t is None:
            return self._fail("read failed")
        if t == _POWER_ON:
            return self._fail("power-on value 85")
        self.error = None
        return t


_groups = {}  # interlock group -> its relays


class Relay:
    """A relay on an output pin, with interlock groups and an optional pulse limit.

    Contract with the board: it creates the pin at its boot level before
    anything else runs, ``Pin(n, Pin.OUT, value=Relay.electrical(level,
    active_high))`` with ``level = Relay.boot_level(policy, safe, last)``
    (``safe`` unless a restore policy says otherwise), and passes that level
    as ``initial``. Constructing a Relay never writes the pin.

    Relays sharing a ``group`` are interlocked: switching one on first
    switches the others off (break before make). With ``max_on_ms`` > 0,
    ``tick()`` switches the relay off once it has been on that long and
    returns True, so the caller reports the change.
    """

    def __init__(self, pin, active_high=True, safe=False, max_on_ms=0, group=None,
                 initial=None):
        self.pin = pin
        self.active_high = bool(active_high)
        self.safe = bool(safe)
        self.max_on_ms = max_on_ms
        self.group = group
        self._on = self.safe if initial is None else bool(initial)
        self._off_at = None  # pulse deadline (ticks)
        if group is not None:
            members = _groups.setdefault(group, [])
            if self._on and any(r._on for r in members):
                log("relay", "interlock group %r: more than one relay on at boot" % (group,))
            members.append(self)

    @staticmethod
    def electrical(on, active_high=True):
        """The pin level (0/1) for a logical state."""
        return 1 if bool(on) == bool(active_high) else 0

    @staticmethod
    def boot_level(policy, safe, last):
        """The logical level to create the pin at. "last" falls back to ``safe`` when
        ``last`` is not a bool (nothing stored); an unknown policy is a ValueError."""
        if policy == "off":
            return False
        if policy == "on":
            return True
        if policy == "last":
            return last if last is True or last is False else bool(safe)
        raise ValueError("restore policy must be off, on or last: %r" % (policy,))

    def set(self, on, now=None):
        if on is not True and on is not False:
            if type(on) is int and on in (0, 1):
                on = on == 1
            else:
                raise ValueError("a boolean is required")
        if on and self.group is not None:
            for r in _groups.get(self.group, ()):
                if r is not self and r._on:
                    r.set(False)
        if on and not self._on and self.max_on_ms > 0:  # a pulse starts; on again does not extend it
            self._off_at = ticks_add(ticks_ms() if now is None else now, self.max_on_ms)
        self.pin.value(Relay.electrical(on, self.active_high))
        self._on = on

    def value(self):
        return self._on

    def safe_state(self):
        self.set(self.safe)

    def tick(self, now=None):
        """Switch off a pulse that lasted max_on_ms; True when it did."""
        if not (self._on and self.max_on_ms > 0):
            return False
        if now is None:
            now = ticks_ms()
        if self._off_at is None:  # on since boot: the pulse starts now
            self._off_at = ticks_add(now, self.max_on_ms)
            return False
        if ticks_diff(now, self._off_at) < 0:
            return False
        self.set(False)
        log("relay", "pulse ended after %d ms" % self.max_on_ms)
        return True

    def release(self):
        """Leave the interlock group (re-configuration, tests)."""
        members = _groups.get(self.group)
        if members and self in members:
            members.remove(self)
            if not members:
                del _groups[self.group]


class PWMOut:
    """A PWM output (``machine.PWM(pin)``): ``set(v)`` maps lo..hi onto duty 0..65535.

    A value of the wrong type or out of range raises ValueError and leaves
    the output as it was. ``value()`` is None until the first ``set()``.
    """

    def __init__(self, pwm, freq=1000, lo=0, hi=100):
        if not hi > lo:
            raise ValueError("hi must be above lo")
        self.pwm = pwm
        self.lo, self.hi = lo, hi
        self._v = None
        pwm.freq(freq)

    def set(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("a number is required")
        if not self.lo <= v <= self.hi:  # also refuses NaN
            raise ValueError("out of range [%s, %s]" % (self.lo, self.hi))
        self.pwm.duty_u16(int((v - self.lo) * _U16 / (self.hi - self.lo) + 0.5))
        self._v = v

    def value(self):
        return self._v
