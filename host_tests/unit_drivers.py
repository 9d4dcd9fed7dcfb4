"""firmware.io.drivers: debounce, analog reporting, DHT/DS18B20 errors, relays, PWM.

Fixture-free: runs under pytest (CPython) and on the unix port (mp_runner.py).
Time is passed explicitly (`now=`) or through a FakeClock: nothing sleeps long.
"""
import asyncio

from firmware import compat
from firmware.io.drivers import DHT, DS18B20, Analog, DigitalIn, PWMOut, Relay
from fakepins import (FakeADC, FakeClock, FakeDHT, FakeDS18X20, FakePin, FakePlainPin,
                      FakePWM, OneWireError)
from fakes import raises as _raises, run

compat._quiet = True


def _changes(d, times):
    """poll() at each time; the (time, value) pairs it reported."""
    out = []
    for t in times:
        v = d.poll(t)
        if v is not None:
            out.append((t, v))
    return out


# --- DigitalIn ------------------------------------------------------------------

def test_digital_first_poll_reports_initial_value():
    d = DigitalIn(FakePlainPin(1))
    assert d.poll(0) is True
    assert d.poll(10) is None
    assert d.value() is True


def test_digital_registers_irq_on_both_edges_and_pull():
    pin = FakePin(0)
    d = DigitalIn(pin, pull=1)
    assert pin.trigger == 3 and pin.handler is not None
    assert pin.pull == 1
    assert d.irq is True
    assert DigitalIn(FakePlainPin(0)).irq is False


def test_digital_irq_handler_only_sets_a_flag():
    clk = FakeClock(0)
    pin = FakePin(0, clock=clk)
    d = DigitalIn(pin, debounce_ms=50, clock=clk)
    assert d.poll() is False
    reads = pin.reads
    clk.t = 100
    pin.set_level(1)
    clk.t = 103
    pin.set_level(0)
    assert pin.reads == reads  # the handler never touched the pin
    assert pin.writes == []
    assert d.stable is False  # ...nor the debounce state
    assert d._edge is True and d._edge_ms == 103


def test_digital_bounces_give_one_change_irq():
    clk = FakeClock(0)
    pin = FakePin(0, clock=clk)
    d = DigitalIn(pin, debounce_ms=50, clock=clk)
    assert d.poll() is False
    for t in (100, 102, 104, 106, 108):  # contact bounce ending high
        clk.t = t
        pin.set_level(0 if pin.level else 1)
    assert pin.level == 1
    got = _changes(d, (110, 140, 157, 158, 200, 300))
    assert got == [(158, True)], got  # 50 ms after the last edge, once


def test_digital_bounce_between_polls_restarts_timer():
    # The level is the same at two polls, but it moved in between: not yet stable.
    clk = FakeClock(0)
    pin = FakePin(0, clock=clk)
    d = DigitalIn(pin, debounce_ms=50, clock=clk)
    d.poll()
    clk.t = 100
    pin.set_level(1)
    assert d.poll(120) is None
    clk.t = 140
    pin.set_level(0)
    clk.t = 145
    pin.set_level(1)
    assert d.poll(160) is None  # 100 -> 160 would pass; 145 -> 160 does not
    assert d.poll(194) is None
    assert d.poll(195) is True


def test_digital_bounces_give_one_change_polling():
    pin = FakePlainPin(0)
    d = DigitalIn(pin, debounce_ms=50)
    assert d.poll(0) is False
    got = []
    for t, level in ((100, 1), (120, 0), (140, 1), (160, 1), (180, 1), (190, 1), (250, 1)):
        pin.level = level
        v = d.poll(t)
        if v is not None:
            got.append((t, v))
    assert got == [(190, True)], got


def test_digital_short_glitch_is_ignored():
    clk = FakeClock(0)
    pin = FakePin(0, clock=clk)
    d = DigitalIn(pin, debounce_ms=50, clock=clk)
    d.poll()
    clk.t = 100
    pin.set_level(1)
    assert d.poll(120) is None  # seen high, but only for 20 ms
    clk.t = 130
    pin.set_level(0)
    assert _changes(d, (140, 200, 400)) == []
    # polling only: a 30 ms glitch seen by one poll
    p2 = FakePlainPin(0)
    d2 = DigitalIn(p2, debounce_ms=50)
    d2.poll(0)
    p2.level = 1
    assert d2.poll(100) is None
    p2.level = 0
    assert _changes(d2, (130, 200, 400)) == []


def test_digital_invert():
    pin = FakePlainPin(0)  # pulled up, pressed = low: invert
    d = DigitalIn(pin, debounce_ms=20, invert=True)
    assert d.poll(0) is True
    pin.level = 1
    assert d.poll(10) is None
    assert d.poll(30) is False
    assert d.value() is False


# --- Analog ---------------------------------------------------------------------

def test_analog_averages_and_scales():
    adc = FakeADC(100, 200, 300, 400)
    a = Analog(adc, samples=4, scale=0.01, offset=1.0)
    assert a.poll(0) == 3.5  # avg 250 * 0.01 + 1
    assert adc.reads == 4
    b = Analog(FakeADC(1000), samples=1, scale=1 / 3, decimals=1)
    assert b.poll(0) == 333.3


def test_analog_deadband_and_min_interval():
    adc = FakeADC(1000)
    a = Analog(adc, samples=2, scale=0.01, deadband=0.5, min_interval_ms=1000,
               max_interval_ms=60000)
    assert a.poll(0) == 10.0
    assert a.poll(2000) is None  # unchanged
    adc.queue = [1040]
    assert a.poll(3000) is None  # 0.4: within the deadband
    assert a.value == 10.4  # read, not reported
    adc.queue = [1100]
    assert a.poll(3100) == 11.0  # beyond the deadband
    adc.queue = [1300]
    assert a.poll(3500) is None  # beyond, but < min_interval since the last report
    assert a.poll(4099) is None
    assert a.poll(4100) == 13.0
    assert a.last == 13.0


def test_analog_max_interval_heartbeat():
    adc = FakeADC(500)
    a = Analog(adc, samples=1, deadband=10, min_interval_ms=1000, max_interval_ms=60000)
    assert a.poll(0) == 500.0
    assert a.poll(59999) is None
    assert a.poll(60000) == 500.0
    assert a.poll(60001) is None


def test_analog_read_error_is_none():
    adc = FakeADC(500)
    a = Analog(adc, samples=3)
    adc.fail = OSError(5)
    assert a.poll(0) is None
    assert a.error.startswith("read failed")
    assert a.poll(1) == 500.0
    assert a.error is None
    _raises(ValueError, Analog, adc, 0)


# --- DHT ------------------------------------------------------------------------

def test_dht_reads_and_honours_min_interval():
    s = FakeDHT(21.5, 40.0)
    d = DHT(s, min_interval_ms=2000)
    assert d.read(now=0) == (21.5, 40.0)
    s.t = 30.0
    assert d.read(now=1999) == (21.5, 40.0)  # cached: the sensor is not asked
    assert s.measures == 1
    assert d.read(now=2000) == (30.0, 40.0)
    assert s.measures == 2 and d.error is None and d.errors == 0


def test_dht_checksum_error_and_recovery():
    s = FakeDHT(22.0, 55.0)
    d = DHT(s)
    s.fail("checksum")
    assert d.read(now=0) is None  # no exception
    assert d.error == "checksum error"
    assert d.errors == 1
    assert d.read(now=1000) is None  # too soon to ask again
    assert s.measures == 1
    assert d.read(now=2000) == (22.0, 55.0)
    assert d.error is None and d.errors == 1


def test_dht_timeout_is_counted():
    s = FakeDHT()
    d = DHT(s, min_interval_ms=0)
    s.fail("timeout")
    assert d.read(now=0) is None
    assert d.error == "timeout"
    s.fail("checksum")
    assert d.read(now=1) is None
    assert d.errors == 2


def test_dht_bug_is_not_swallowed():
    class Broken(FakeDHT):
        def measure(self):
            raise TypeError("a bug")

    _raises(TypeError, DHT(Broken()).read, 0)


# --- DS18B20 --------------------------------------------------------------------

def test_ds18b20_reads_and_scans_once():
    ds = FakeDS18X20(temps=[21.25, 21.5])
    s = DS18B20(ds, conv_ms=1)
    assert run(s.read()) == 21.25
    assert run(s.read()) == 21.5
    assert ds.scans == 1 and ds.converts == 2
    assert s.error is None
    assert ds.reads == [ds.roms[0], ds.roms[0]]


def test_ds18b20_given_rom_never_scans():
    ds = FakeDS18X20(temps=[19.0])
    s = DS18B20(ds, rom=b"\x28rom", conv_ms=1)
    assert run(s.read()) == 19.0
    assert ds.scans == 0 and ds.reads == [b"\x28rom"]


def test_ds18b20_missing_sensor():
    ds = FakeDS18X20(roms=[])
    s = DS18B20(ds, conv_ms=1)
    assert run(s.read()) is None
    assert s.error == "no sensor"
    assert ds.converts == 0
    ds.roms = [b"\x28new"]  # plugged in: the next read finds it
    assert run(s.read()) == 21.0
    assert s.error is None


def test_ds18b20_power_on_value_rejected():
    ds = FakeDS18X20(temps=[85.0, 22.5])
    s = DS18B20(ds, conv_ms=1)
    assert run(s.read()) is None
    assert s.error == "power-on value 85"
    assert run(s.read()) == 22.5


def test_ds18b20_read_errors():
    for bad in (OSError(5), OneWireError(), Exception("CRC error"), None):
        ds = FakeDS18X20(temps=[bad, 20.0])
        s = DS18B20(ds, conv_ms=1)
        assert run(s.read()) is None, bad
        assert s.error == "read failed" and s.errors == 1
        assert run(s.read()) == 20.0
        assert ds.scans == 2  # a found rom is forgotten after a failure
    ds = FakeDS18X20(temps=[ValueError("a bug")])
    _raises(ValueError, run, DS18B20(ds, conv_ms=1).read())


def test_ds18b20_conversion_does_not_block_the_loop():
    ticks = []

    async def other():
        for i in range(5):
            ticks.append(i)
            await asyncio.sleep(0.005)

    async def main():
        t = asyncio.create_task(other())
        v = await DS18B20(FakeDS18X20(temps=[18.5]), conv_ms=60).read()
        await t
        return v

    assert run(main()) == 18.5
    assert ticks == [0, 1, 2, 3, 4]


# --- Relay ----------------------------------------------------------------------

def test_relay_construction_never_writes_the_pin():
    for active_high in (True, False):
        for safe in (False, True):
            pin = FakePin(Relay.electrical(safe, active_high))
            r = Relay(pin, active_high=active_high, safe=safe)
            assert pin.writes == []
            assert r.value() is safe
            assert pin.level == Relay.electrical(safe, active_high)
    pin = FakePin(1)
    r = Relay(pin, safe=False, initial=True)  # restore policy "on"
    assert pin.writes == [] and r.value() is True


def test_relay_electrical_and_active_low():
    assert Relay.electrical(True, True) == 1 and Relay.electrical(False, True) == 0
    assert Relay.electrical(True, False) == 0 and Relay.electrical(False, False) == 1
    pin = FakePin(1)
    r = Relay(pin, active_high=False)
    r.set(True)
    assert pin.level == 0 and r.value() is True
    r.set(False)
    assert pin.level == 1 and r.value() is False
    assert [v for _, v in pin.writes] == [0, 1]


def test_relay_refuses_non_boolean_without_writing():
    pin = FakePin(0)
    r = Relay(pin)
    for bad in ("on", 2, None, 0.5):
        _raises(ValueError, r.set, bad)
    assert pin.writes == []
    r.set(1)
    assert r.value() is True


def test_relay_safe_state():
    pin = FakePin(0)
    r = Relay(pin, safe=True, initial=False)
    r.safe_state()
    assert r.value() is True and pin.level == 1


def test_relay_interlock_breaks_before_make():
    log = []
    clk = FakeClock(5)
    pa = FakePin(0, clock=clk, name="a", log=log)
    pb = FakePin(0, clock=clk, name="b", log=log)
    pc = FakePin(0, clock=clk, name="c", log=log)
    a = Relay(pa, group="t-interlock")
    b = Relay(pb, group="t-interlock")
    c = Relay(pc, group="t-other")
    c.set(True)
    a.set(True)
    del log[:]
    b.set(True)
    assert log == [("a", 5, 0), ("b", 5, 1)], log
    assert (a.value(), b.value(), c.value()) == (False, True, True)
    del log[:]
    b.set(False)  # switching off touches nobody else
    assert log == [("b", 5, 0)]
    for r in (a, b, c):
        r.release()
    a2 = Relay(FakePin(0), group="t-interlock")
    a2.set(True)
    assert pb.level == 0 and len(pb.writes) == 2  # released: no longer interlocked
    a2.release()


def test_relay_pulse_switches_off_after_max_on():
    pin = FakePin(0)
    r = Relay(pin, max_on_ms=500)
    assert r.tick(0) is False  # off: nothing to do
    r.set(True, now=1000)
    assert r.tick(1200) is False and r.value() is True
    r.set(True, now=1300)  # on again: the pulse is not extended
    assert r.tick(1499) is False and r.value() is True
    assert r.tick(1500) is True
    assert r.value() is False and pin.level == 0
    assert r.tick(2000) is False
    r.set(True, now=3000)
    assert r.tick(3499) is False and r.tick(3500) is True


def test_relay_pulse_on_since_boot_starts_at_first_tick():
    pin = FakePin(1)
    r = Relay(pin, max_on_ms=100, initial=True)
    assert r.tick(50) is False
    assert r.tick(149) is False
    assert r.tick(150) is True and pin.level == 0
    assert Relay(FakePin(0)).tick(10 ** 6) is False  # no max_on_ms: never


def test_relay_boot_level():
    assert Relay.boot_level("off", True, True) is False
    assert Relay.boot_level("on", False, False) is True
    assert Relay.boot_level("last", False, True) is True
    assert Relay.boot_level("last", True, False) is False
    assert Relay.boot_level("last", True, None) is True  # nothing stored: safe
    assert Relay.boot_level("last", False, 1) is False  # not a bool: safe
    _raises(ValueError, Relay.boot_level, "maybe", False, None)


# --- PWMOut ---------------------------------------------------------------------

def test_pwm_mapping():
    pwm = FakePWM()
    p = PWMOut(pwm, freq=2000)
    assert pwm.freqs == [2000] and pwm.duties == []
    assert p.value() is None
    for v, duty in ((0, 0), (100, 65535), (50, 32768), (25.0, 16384)):
        p.set(v)
        assert pwm.duties[-1] == duty, (v, pwm.duties)
        assert p.value() == v
    q = PWMOut(FakePWM(), lo=-10, hi=10)
    q.set(0)
    assert q.pwm.duties == [32768]
    q.set(-10)
    assert q.pwm.duties[-1] == 0


def test_pwm_range_and_type_errors_leave_output_untouched():
    pwm = FakePWM()
    p = PWMOut(pwm)
    p.set(40)
    before = list(pwm.duties)
    for bad in (101, -1, 100.001, "50", True, None, float("nan"), [50]):
        _raises(ValueError, p.set, bad)
    assert pwm.duties == before
    assert p.value() == 40
    _raises(ValueError, PWMOut, FakePWM(), 1000, 10, 10)
