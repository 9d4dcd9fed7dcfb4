"""Wall-clock faults: the device clock skewed a day at boot, and jumping an hour during a
run. Keepalive pings, backoff and desired-state windows must not move: they run on
ticks_ms (monotonic) and on server time (the HTTP Date header plus ticks since).

How the clock is faked: libfaketime (Debian's `libfaketime`, installed by
`./deploy.sh setup`) preloaded into the firmware's process, so the real process clock
moves: time.time(), time.time_ns(), gmtime() and mbedTLS's certificate-validity check
all see it. FAKETIME_DONT_FAKE_MONOTONIC=1 keeps CLOCK_MONOTONIC (ticks_ms) real, as on
the ESP32, where an NTP step moves the RTC but not the tick counter. The offset is read
from a file (FAKETIME_TIMESTAMP_FILE, re-read every second), so a test makes it jump by
rewriting the file.

The firmware runs from a wrapper main (in a folder beside the flash, with the firmware
package linked in) that only wraps mqtt.encode_pingreq to log "test: PINGREQ", so
pings can be counted on the firmware's own tick clock; then it calls firmware.app.main().

Expected and noted, not a fault: value_received_at is the device's wall clock (a
device a day ahead stamps its readings a day ahead; the cloud accepts up to 48 h ahead).
"""
import glob
import json
import os
import re
import time

import pytest

import fault_report
from realer_harness import ROOT, RunningCloud

pytestmark = pytest.mark.fault

LIB = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
                        + glob.glob("/usr/lib/faketime/libfaketime.so.1"))), "")
KEEPALIVE = 10  # the config minimum: a ping every 5 s (half of it) when idle

WRAPPER = """\
from firmware.net import mqtt
from firmware.compat import log
_encode = mqtt.encode_pingreq


def _ping():
    log("test", "PINGREQ")
    return _encode()


mqtt.encode_pingreq = _ping
import firmware.app
firmware.app.main()
"""


@pytest.fixture(scope="module")
def clock_cloud(tmp_path_factory):
    if not LIB:
        pytest.skip("libfaketime is not installed (./deploy.sh setup installs it)")
    c = RunningCloud(tmp_path_factory.mktemp("realer-clock"), "--quiet")
    yield c
    c.stop()


class FakeClock:
    """The firmware's wall-clock offset, e.g. "+1d", "-1h", "+0"."""

    def __init__(self, folder, offset):
        self.path = os.path.join(str(folder), "faketime.rc")
        self.set(offset)

    def set(self, offset):
        with open(self.path + ".tmp", "w") as f:
            f.write(offset + "\n")
        os.replace(self.path + ".tmp", self.path)

    def env(self):
        return {"LD_PRELOAD": LIB, "FAKETIME_TIMESTAMP_FILE": self.path,
                "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _firmware(fw, cloud, tmp_path, monkeypatch, clock):
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(WRAPPER)
    if not (code / "firmware").exists():
        os.symlink(os.path.join(ROOT, "firmware"), str(code / "firmware"))
    f = fw(cloud, mpy_dir=str(code), interval=3600, keepalive=KEEPALIVE)  # no sensor heartbeat
    with monkeypatch.context() as m:  # the environment of this one child process
        for k, v in clock.env().items():
            m.setenv(k, v)
        f.start()
    return f


def _ms(line):
    m = re.match(r"\s*(\d+)\.(\d+) ", line)
    return int(m.group(1)) * 1000 + int(m.group(2))


def _stamp_offset(f, value):
    """Seconds between the value_received_at the firmware gave `value` and the host's clock."""
    f.set_input("temperature", value)
    line = f.wait_log(r'publish: temperature \{.*"value": %s' % value, timeout=10)
    at = json.loads(line.split("publish: temperature ", 1)[1])["value_received_at"]
    t = time.mktime(time.strptime(at[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    f.wait_log(r"ack: temperature accepted", timeout=10)
    return t - time.time()


def _pings(f, seconds):
    """Intervals (s, on the firmware's tick clock) between the PINGREQs of a quiet window."""
    t_end = time.monotonic() + seconds
    ticks = []
    while time.monotonic() < t_end:
        try:
            ticks.append(_ms(f.wait_log(r"test: PINGREQ", timeout=max(0.1, t_end - time.monotonic()))))
        except AssertionError:
            break
    return [(b - a) / 1000 for a, b in zip(ticks, ticks[1:])], len(ticks)


def _desired_answer(cloud, did, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = cloud.ledger("SELECT ack_status FROM desired WHERE desired_id=?", (did,))
        if row and row[0][0]:
            return row[0][0]
        time.sleep(0.2)
    return None


@pytest.mark.parametrize("offset,seconds", [("+1d", 86400), ("-1d", -86400)])
def test_clock_skewed_a_day_at_boot(offset, seconds, clock_cloud, fw, tmp_path, monkeypatch):
    t0 = time.monotonic()
    c = clock_cloud
    # Its 1 s window is over by server time when the firmware gets it (retained). A device
    # trusting its own clock a day behind would apply it; one a day ahead would call a
    # fresh one stale.
    old = c.desired("relay", True, valid_for=1)
    time.sleep(3)
    clock = FakeClock(tmp_path, offset)
    f = _firmware(fw, c, tmp_path, monkeypatch, clock)
    # The retained command can come in before the "mqtt: connected" line (it follows the
    # SUBACK), so this waits for the answer alone.
    f.wait_log(r"desired: relay seq=%d value=True -> stale \(now False\)" % old["sequence_number"])
    assert f.output("relay") is False
    assert _desired_answer(c, old["desired_id"]) == "stale"
    skew = _stamp_offset(f, 40.5)
    assert abs(skew - seconds) < 5, skew  # the device's wall clock, as expected
    fresh = c.desired("relay", True, valid_for=30)
    f.wait_log(r"desired: relay seq=%d value=True -> applied" % fresh["sequence_number"])
    assert f.output("relay") is True
    assert _desired_answer(c, fresh["desired_id"]) == "applied"
    crashes = int(any("Traceback" in x for x in f.lines))
    fault_report.record("clock skewed %s at boot (libfaketime)" % offset, faults=1, crashes=crashes,
                        applied_twice=0, stamp_skew_s=skew, run_s=time.monotonic() - t0,
                        notes="expired command stale, 30 s command applied; value_received_at"
                              " follows the device clock (expected)")
    assert crashes == 0


def test_wall_clock_jumps_an_hour_during_a_run(clock_cloud, fw, tmp_path, monkeypatch):
    t0 = time.monotonic()
    c = clock_cloud
    clock = FakeClock(tmp_path, "+0")
    # Backoff: two refused tokens, Retry-After 3 s; the clock jumps during each wait.
    c.fault("token", status=503, retry_after=3, times=2)
    f = _firmware(fw, c, tmp_path, monkeypatch, clock)
    waits = []
    for jump in ("+1h", "-1h"):
        line = f.wait_log(r"supervisor: \S+: retrying in")
        t_said = float(line.split("retrying in ")[1].split()[0])
        t1 = time.monotonic()
        time.sleep(1.0)
        clock.set(jump)
        f.wait_log(r"bootstrap: token")
        waits.append((t_said, time.monotonic() - t1))
    for said, took in waits:
        assert said >= 3 and abs(took - said) < 0.8, waits  # neither skipped nor stretched
    f.wait_log(r"mqtt: connected")
    creds = c.ledger("SELECT COUNT(*) FROM credentials")[0][0]

    results = {}
    for n, (offset, seconds, value) in enumerate((("-1h", -3600, 41.5), ("+1h", 3600, 43.5))):
        if n:
            clock.set(offset)  # a two-hour step forward
            time.sleep(1.2)  # libfaketime reads the file again within a second
        gaps, count = _pings(f, 11.5)
        skew = _stamp_offset(f, value)
        cmd = c.desired("relay", n == 0, valid_for=30)
        f.wait_log(r"desired: relay seq=%d value=\S+ -> applied" % cmd["sequence_number"])
        assert f.output("relay") is (n == 0)
        assert _desired_answer(c, cmd["desired_id"]) == "applied"
        results[offset] = (gaps, count, skew)
        assert abs(skew - seconds) < 5, (offset, skew)
        assert count >= 2 and all(KEEPALIVE / 2 - 0.2 <= g <= KEEPALIVE / 2 + 1.2 for g in gaps), (
            offset, gaps)
    assert not any(re.search(r"mqtt: down|keepalive timeout|link: ", x) for x in f.lines), f.log()
    assert c.ledger("SELECT COUNT(*) FROM credentials")[0][0] == creds  # one session throughout
    crashes = int(any("Traceback" in x for x in f.lines))
    fault_report.record(
        "clock jumps -1h/+1h during a run (libfaketime)", faults=4, crashes=crashes, applied_twice=0,
        backoff_said_s=",".join("%.1f" % s for s, _ in waits),
        backoff_took_s=",".join("%.2f" % t for _, t in waits),
        ping_gaps_s=";".join("%s:%s" % (k, ",".join("%.1f" % g for g in v[0])) for k, v in results.items()),
        run_s=time.monotonic() - t0,
        notes="backoff waits, 5 s keepalive pings and 30 s command windows unchanged by the jumps;"
              " one MQTT session throughout")
    assert crashes == 0
