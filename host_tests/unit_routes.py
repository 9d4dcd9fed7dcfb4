"""firmware.routes: sensor deadband/interval, command value checks, build on a virtual board.

Fixture-free: runs under pytest (CPython) and on the unix port (mp_runner.py).
"""
import json
import time

from firmware import compat
from firmware.io.wiring import build
from firmware.routes import CommandRoute, SensorRoute
from fakes import FakeRelay, exists as _exists, raises as _raises, rmtree as _rmtree, tmpdir as _tmpdir

compat._quiet = True


def _read(p):
    with open(p) as f:
        return f.read()


def _write(p, text):
    with open(p, "w") as f:
        f.write(text)


class FakeSensor:
    def __init__(self, v=None):
        self.v = v
        self.reads = 0

    def read(self):
        self.reads += 1
        return self.v


# --- SensorRoute ----------------------------------------------------------------

def test_sensor_first_reading_is_reported():
    r = SensorRoute("r-temp", {"name": "temp", "interval": 60, "deadband": 0.5}, FakeSensor(20.0))
    assert r.poll() == 20.0
    assert r.last_value == 20.0
    assert (r.id, r.name, r.kind) == ("r-temp", "temp", "sensor")


def test_sensor_unchanged_not_reported_within_interval():
    d = FakeSensor(20.0)
    r = SensorRoute("r-temp", {"interval": 60, "deadband": 0.5}, d)
    assert r.poll() == 20.0
    assert r.poll() is None
    assert d.reads == 2


def test_sensor_small_change_waits_for_interval():
    d = FakeSensor(20.0)
    r = SensorRoute("r-temp", {"interval": 0.2, "deadband": 0.5}, d)
    assert r.poll() == 20.0
    d.v = 20.4  # within the deadband
    assert r.poll() is None
    assert r.last_value == 20.4  # read, just not worth sending yet
    time.sleep(0.25)
    assert r.poll() == 20.4  # the interval passed: the current value goes out
    assert r.poll() is None


def test_sensor_unchanged_value_repeats_every_interval():
    d = FakeSensor(5)
    r = SensorRoute("r-temp", {"interval": 0.1, "deadband": 0}, d)
    assert r.poll() == 5
    assert r.poll() is None
    time.sleep(0.15)
    assert r.poll() == 5


def test_sensor_change_beyond_deadband_reported_at_once():
    d = FakeSensor(20.0)
    r = SensorRoute("r-temp", {"interval": 60, "deadband": 0.5}, d)
    assert r.poll() == 20.0
    d.v = 20.4
    assert r.poll() is None
    d.v = 20.6  # beyond the deadband from the last value sent (20.0)
    assert r.poll() == 20.6
    d.v = 20.2  # 0.4 from 20.6: within
    assert r.poll() is None
    d.v = 19.9  # 0.7 below 20.6
    assert r.poll() == 19.9


def test_sensor_deadband_measured_from_last_sent_not_last_read():
    d = FakeSensor(10.0)
    r = SensorRoute("r-temp", {"interval": 60, "deadband": 1.0}, d)
    assert r.poll() == 10.0
    for v in (10.4, 10.8):  # creeping: each step small, the sum beyond the deadband
        d.v = v
        assert r.poll() is None, v
    d.v = 11.2
    assert r.poll() == 11.2


def test_sensor_boolean_reports_on_change():
    d = FakeSensor(False)
    r = SensorRoute("r-door", {"interval": 60, "deadband": 5}, d)
    assert r.poll() is False
    assert r.poll() is None
    d.v = True  # 1 - 0 is within a deadband of 5, but a boolean change always counts
    assert r.poll() is True
    assert r.poll() is None
    d.v = False
    assert r.poll() is False


def test_sensor_driver_none_reports_nothing():
    d = FakeSensor(None)
    r = SensorRoute("r-temp", {"interval": 0.05}, d)
    assert r.poll() is None
    time.sleep(0.06)
    assert r.poll() is None
    assert r.last_value is None
    d.v = 7
    assert r.poll() == 7


def test_sensor_none_between_readings_keeps_last_sent():
    d = FakeSensor(20.0)
    r = SensorRoute("r-temp", {"interval": 60, "deadband": 0.5}, d)
    assert r.poll() == 20.0
    d.v = None
    assert r.poll() is None
    d.v = 20.2
    assert r.poll() is None  # compared with 20.0, not with the missing reading
    assert r.last_value == 20.2


# --- CommandRoute.check ----------------------------------------------------------

def test_boolean_check_accepts_bools_and_0_1():
    r = CommandRoute("r-relay", {}, FakeRelay())
    assert r.check(True) is True
    assert r.check(False) is False
    assert r.check(1) is True
    assert r.check(0) is False


def test_boolean_check_refuses_others():
    r = CommandRoute("r-relay", {}, FakeRelay())
    for v in (2, -1, "on", "true", None, 1.0, 0.0, [], {}):
        _raises(ValueError, r.check, v)


def test_integer_check_range():
    r = CommandRoute("r-dim", {}, FakeRelay(0), "integer", 0, 100)
    assert r.check(0) == 0
    assert r.check(100) == 100
    v = r.check(42)
    assert v == 42 and type(v) is int
    for bad in (-1, 101, 10 ** 30, "50", None, True, False):
        _raises(ValueError, r.check, bad)


def test_integer_check_accepts_integral_float_as_int():
    r = CommandRoute("r-dim", {}, FakeRelay(0), "integer", 0, 100)
    v = r.check(50.0)
    assert v == 50 and type(v) is int, repr(v)


def test_integer_check_refuses_fraction():
    r = CommandRoute("r-dim", {}, FakeRelay(0), "integer", 0, 100)
    _raises(ValueError, r.check, 2.5)
    _raises(ValueError, r.check, 100.5)


def test_integer_check_refuses_out_of_range_float():
    r = CommandRoute("r-dim", {}, FakeRelay(0), "integer", 0, 100)
    _raises(ValueError, r.check, 101.0)


def test_number_check_refuses_nan_inf_bool():
    r = CommandRoute("r-set", {}, FakeRelay(0), "number", -10, 10)
    assert r.check(2.5) == 2.5
    assert r.check(-10) == -10
    for bad in (float("nan"), float("inf"), float("-inf"), True, False, "1", None, 10.5, -11):
        _raises(ValueError, r.check, bad)


def test_number_check_without_bounds():
    r = CommandRoute("r-set", {}, FakeRelay(0), "number")
    assert r.check(1e9) == 1e9
    assert r.check(-3) == -3
    _raises(ValueError, r.check, float("nan"))


def test_apply_and_make_safe():
    d = FakeRelay(False)
    r = CommandRoute("r-relay", {"name": "pump", "safe": False}, d)
    assert (r.kind, r.name, r.safe_level) == ("command", "pump", False)
    r.apply(True)
    assert d.sets == [True] and r.value() is True
    r.make_safe()
    assert d.sets == [True, False] and r.value() is False
    r2 = CommandRoute("r-valve", {"safe": True}, FakeRelay(True))
    r2.apply(False)
    r2.make_safe()
    assert r2.value() is True


# --- build on the virtual board -------------------------------------------------

_CFG = {
    "r-temp": {"driver": "virtual_sensor", "name": "temp", "interval": 60},
    "r-pump": {"driver": "virtual_relay", "name": "pump", "safe": False},
    "r-valve": {"driver": "virtual_relay", "name": "valve", "safe": True},
    "r-door": {"driver": "virtual_sensor"},  # no name: the route id names the file
}


def test_build_relays_at_safe_level_right_away():
    root = _tmpdir()
    try:
        routes = build(_CFG, root)
        # Nothing has run yet: the files must already hold the safe levels.
        assert json.loads(_read(root + "/virtual/pump.out")) is False
        assert json.loads(_read(root + "/virtual/valve.out")) is True
        assert routes["r-pump"].value() is False
        assert routes["r-valve"].value() is True
        assert not _exists(root + "/virtual/pump.out.tmp")
    finally:
        _rmtree(root)


def test_build_route_kinds_and_names():
    root = _tmpdir()
    try:
        routes = build(_CFG, root)
        assert sorted(routes) == ["r-door", "r-pump", "r-temp", "r-valve"]
        assert routes["r-pump"].kind == "command" and routes["r-temp"].kind == "sensor"
        assert routes["r-temp"].name == "temp" and routes["r-door"].name == "r-door"
        assert routes["r-pump"].safe_level is False and routes["r-valve"].safe_level is True
    finally:
        _rmtree(root)


def test_build_relay_writes_level_on_apply():
    root = _tmpdir()
    try:
        r = build(_CFG, root)["r-pump"]
        r.apply(True)
        assert json.loads(_read(root + "/virtual/pump.out")) is True
        r.make_safe()
        assert json.loads(_read(root + "/virtual/pump.out")) is False
    finally:
        _rmtree(root)


def test_build_sensors_read_virtual_in_files():
    root = _tmpdir()
    try:
        routes = build(_CFG, root)
        temp, door = routes["r-temp"], routes["r-door"]
        assert temp.driver.read() is None  # no file yet
        assert temp.poll() is None
        _write(root + "/virtual/temp.in", "21.5")
        assert temp.driver.read() == 21.5
        assert temp.poll() == 21.5
        _write(root + "/virtual/r-door.in", "true")
        assert door.driver.read() is True
        for bad in ("not json", '"warm"', "[1]", ""):
            _write(root + "/virtual/temp.in", bad)
            assert temp.driver.read() is None, bad
    finally:
        _rmtree(root)
