"""firmware.boot: WiFi with backoff and NTP, with a fake radio and clock source. Both runtimes."""
import asyncio
import sys

from fakes import run
from firmware import boot, compat
from firmware.io import board

compat._quiet = True


class FakeWLAN:
    def __init__(self, up_after=None):
        self.up_after = up_after  # isconnected() polls before the link comes up (None: never)
        self.polls = 0
        self.connects = 0
        self.disconnects = 0
        self.active_set = None

    def active(self, v):
        self.active_set = v

    def connect(self, ssid, password):
        self.connects += 1

    def disconnect(self):
        self.disconnects += 1

    def isconnected(self):
        self.polls += 1
        return self.up_after is not None and self.polls > self.up_after

    def ifconfig(self):
        return ("192.0.2.7", "255.255.255.0", "192.0.2.1", "192.0.2.1")


def _with_radio(wlan):
    saved = (board.wlan, board.virtual)
    board.wlan = lambda: wlan
    board.virtual = lambda: False
    return saved


def _restore(saved):
    board.wlan, board.virtual = saved


def test_wifi_joins_and_returns_the_station():
    w = FakeWLAN(up_after=3)
    saved = _with_radio(w)
    try:
        assert run(boot.wifi("home", "pw", wait_ms=2000)) is w
        assert w.active_set is True and w.connects == 1 and w.disconnects == 0
    finally:
        _restore(saved)


def test_wifi_keeps_trying_with_growing_waits_and_never_spins():
    w = FakeWLAN(up_after=None)
    saved = _with_radio(w)

    async def bounded():
        try:
            await asyncio.wait_for(boot.wifi("home", "pw", wait_ms=250, backoff_ms=100, cap_ms=400), 2)
        except asyncio.TimeoutError:
            pass
    try:
        run(bounded())
        assert w.connects >= 3 and w.disconnects >= 2, (w.connects, w.disconnects)
        # A quarter-second poll, not a busy loop: 2 s allow a few dozen polls, not thousands.
        assert w.polls < 40, w.polls
    finally:
        _restore(saved)


def test_no_radio_or_no_ssid_is_not_an_error():
    saved = _with_radio(None)
    try:
        assert run(boot.wifi("home", "pw")) is None
    finally:
        _restore(saved)
    w = FakeWLAN(up_after=0)
    saved = _with_radio(w)
    try:
        assert run(boot.wifi(None, None)) is None and w.connects == 0
    finally:
        _restore(saved)


class FakeNTP:
    def __init__(self, failures):
        self.failures = failures
        self.calls = 0

    def settime(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError(110, "timeout")


def test_ntp_retries_then_sets_the_clock():
    fake = FakeNTP(failures=2)
    sys.modules["ntptime"] = fake
    saved = _with_radio(None)
    try:
        assert run(boot.ntp(tries=4, wait_s=0)) is True
        assert fake.calls == 3
        fake2 = FakeNTP(failures=9)
        sys.modules["ntptime"] = fake2
        assert run(boot.ntp(tries=3, wait_s=0)) is False and fake2.calls == 3
    finally:
        del sys.modules["ntptime"]
        _restore(saved)
