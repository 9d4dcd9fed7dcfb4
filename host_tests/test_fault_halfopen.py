"""Fault suite: a half-open link. The firmware runs on the unix port in its own network
namespace, joined to the local cloud in the root namespace by a veth pair; iptables inside
the namespace then drops every packet on the veth, both ways, so no RST or FIN ever arrives:
the TCP connection looks alive to the kernel and only the MQTT keepalive can tell.

Each cycle, while the firmware streams sensor events:
  1. DROP both ways; the firmware must log "mqtt: down" within 1.5 x keepalive (`detect_s`);
  2. new events keep coming while the link is dead (they queue in the outbox);
  3. the rules go; the firmware must reconnect, and every event of the cycle must reach the
     ledger exactly once with its message_id (`recover_s`: rules gone -> all of them in).
Cycle 2 drops the link right after the last event's ack arrived and sends nothing more
until the firmware notices, so the keepalive deadline alone must catch it, and silence
starts with the DROP: the full 1.5 x keepalive is used. Cycles 1 and 3 publish into the
dead link (a PUBACK timeout may notice first; the messages in flight are resent with
DUP after the reconnect).

The cloud listens on the veth address as well (`serve --listen`) and advertises it
(`--public-host`): the server certificate then carries it as an IP SAN, which the
firmware verifies like a name. Needs root, `ip` and `iptables` (./deploy.sh setup
installs iproute2 and iptables); skipped, with the reason, otherwise.
"""
import json
import os
import random
import re
import shutil
import subprocess
import time

import pytest

from fault_report import record
from firmware_harness import Firmware

pytestmark = pytest.mark.fault

KEEPALIVE = 10  # the firmware's minimum (config: mqtt.keepalive 10..3600)
DETECT_LIMIT = 1.5 * KEEPALIVE
SLACK = 0.3  # the host's side of the measurement: iptables' exit, the log pipe
CYCLES = 3
HOLD_S = 3  # the link stays dead this long after the firmware noticed
RECOVER_LIMIT = 20  # SYN retries (1, 3, 7 s apart) + backoff + draining


def _sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=check)


class Netns:
    """A namespace with one veth to the root namespace: 10.200.X.(4Y+1) here, (4Y+2) there."""

    def __init__(self):
        tag = "%05x" % random.getrandbits(20)
        self.name = "ugate-ho-" + tag
        self.veth_host, self.veth_ns = "ugho%sh" % tag, "ugho%sn" % tag
        used = _sh("ip", "-o", "-4", "addr").stdout
        while True:
            x, y = random.randrange(256), random.randrange(64)
            net = "10.200.%d." % x
            if net not in used:
                break
        self.host_addr, self.ns_addr = net + str(4 * y + 1), net + str(4 * y + 2)
        self.iptables = None
        self.created = False

    def setup(self):
        _sh("ip", "netns", "add", self.name)
        self.created = True
        _sh("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        _sh("ip", "link", "set", self.veth_ns, "netns", self.name)
        _sh("ip", "addr", "add", self.host_addr + "/30", "dev", self.veth_host)
        _sh("ip", "link", "set", self.veth_host, "up")
        self.run("ip", "addr", "add", self.ns_addr + "/30", "dev", self.veth_ns)
        self.run("ip", "link", "set", self.veth_ns, "up")
        self.run("ip", "link", "set", "lo", "up")
        # The nft backend or the legacy one, whichever this kernel takes.
        for exe in ("iptables", "iptables-nft", "iptables-legacy"):
            if shutil.which(exe) and self.run(exe, "-w", "-S", check=False).returncode == 0:
                self.iptables = exe
                break

    def run(self, *cmd, check=True):
        return _sh("ip", "netns", "exec", self.name, *cmd, check=check)

    def prefix(self):
        return ["ip", "netns", "exec", self.name]

    def _rules(self, op):
        self.run(self.iptables, "-w", op, "INPUT", "-i", self.veth_ns, "-j", "DROP")
        self.run(self.iptables, "-w", op, "OUTPUT", "-o", self.veth_ns, "-j", "DROP")

    def drop(self):
        self._rules("-I")

    def undrop(self):
        self._rules("-D")

    def dropping(self):
        out = self.run(self.iptables, "-w", "-S", check=False).stdout
        return "-j DROP" in out

    def teardown(self):
        if self.created:
            _sh("ip", "netns", "del", self.name, check=False)  # its rules go with it
        _sh("ip", "link", "del", self.veth_host, check=False)  # and its veth pair


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root: a network namespace and iptables rules")
    if not shutil.which("ip"):
        pytest.skip("needs ip (iproute2; ./deploy.sh setup installs it)")
    if not any(shutil.which(x) for x in ("iptables", "iptables-nft", "iptables-legacy")):
        pytest.skip("needs iptables (./deploy.sh setup installs it)")
    ns = Netns()
    try:
        try:
            ns.setup()
        except subprocess.CalledProcessError as e:
            pytest.skip("cannot make a network namespace here: %s" % (e.stderr or e).strip())
        if ns.iptables is None:
            pytest.skip("no working iptables (neither nft nor legacy) inside a namespace")
        yield ns
    finally:
        ns.teardown()


# --- helpers ------------------------------------------------------------------

def _wait(f, start, pattern, timeout):
    """(index, line, host time seen) of the first line from `start` on matching `pattern`."""
    i, line = f.find(start, pattern, timeout)
    return i, line, time.monotonic()


_PUB = re.compile(r'publish: (\S+) \{"message_id": "([^"]+)", "value": ([^,}]+)')


def _published(lines):
    """{message_id: (route name, value text)} in the order first published."""
    out = {}
    for line in lines:
        m = _PUB.search(line)
        if m and m.group(2) not in out:
            out[m.group(2)] = (m.group(1), m.group(3))
    return out


def _effects(cloud, device_id):
    return {r[0]: (r[1], r[2]) for r in cloud.ledger(
        "SELECT message_id, COUNT(*), value FROM effects WHERE device_id = ? GROUP BY message_id",
        (device_id,))}


def _wait_ledger(cloud, device_id, mids, timeout):
    """Seconds until every one of `mids` has its effect row (AssertionError after `timeout`)."""
    t0 = time.monotonic()
    while True:
        got = _effects(cloud, device_id)
        missing = [m for m in mids if m not in got]
        if not missing:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError("not in the ledger after %s s: %s" % (timeout, missing))
        time.sleep(0.1)


class Stream:
    """Temperature readings one degree apart (deadband 0.5), so each is one event."""

    def __init__(self, f):
        self.f = f
        self.value = 20.0

    def step(self):
        self.value += 1.0
        self.f.set_input("temperature", self.value)

    def run(self, seconds, every=0.5):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.step()
            time.sleep(every)


def _newest(stream):
    """The publish line of the stream's newest reading."""
    return r'publish: temperature \{"message_id": "[^"]+", "value": %s\b' % re.escape(repr(stream.value))


# --- the test -----------------------------------------------------------------

def test_half_open_link_is_detected_within_one_and_a_half_keepalives_and_nothing_is_lost(
        netns, own_cloud, tmp_path):
    t_start = time.monotonic()
    cloud = own_cloud("--listen", netns.host_addr, "--public-host", netns.host_addr, "--quiet")
    assert cloud.info["api_url"] == "https://%s:%d" % (netns.host_addr, cloud.http_port)
    device_id = cloud.client()[2]
    f = Firmware(cloud, tmp_path / "flash", wrap=netns.prefix(), keepalive=KEEPALIVE,
                 interval=600)  # no heartbeats: every event is one the test made
    detects, recovers, reconnects, reasons, queued = [], [], [], [], []
    try:
        f.start()
        _wait(f, 0, r"mqtt: connected to %s:%d" % (re.escape(netns.host_addr), cloud.mqtt_port), 30)
        s = Stream(f)
        for cycle in range(1, CYCLES + 1):
            quiet = cycle == 2
            n_run = len(f.lines)
            s.run(3)
            if quiet:  # the last event's ack is the last packet in: silence starts with the DROP
                _, line, _ = _wait(f, n_run, _newest(s), 10)
                mid = _PUB.search(line).group(2)
                _wait(f, n_run, r"ack: temperature accepted message_id=%s " % mid, 10)
            n_drop = len(f.lines)
            netns.drop()
            t_drop = time.monotonic()
            if not quiet:
                s.run(1.5)  # publishes into the dead link
            _, line, t_down = _wait(f, n_drop, r"mqtt: down: ", DETECT_LIMIT + 5)
            detects.append(t_down - t_drop)
            reasons.append(line.split("mqtt: down: ", 1)[1])
            assert detects[-1] <= DETECT_LIMIT + SLACK, (
                "cycle %d: a half-open link noticed after %.2f s (limit 1.5 x keepalive = %.1f s): %s"
                % (cycle, detects[-1], DETECT_LIMIT, line))
            s.run(HOLD_S, every=1.0)  # events while the link is known dead: they queue
            n_undrop = len(f.lines)
            netns.undrop()
            t_undrop = time.monotonic()
            _, _, t_conn = _wait(f, n_undrop, r"mqtt: connected", RECOVER_LIMIT)
            reconnects.append(t_conn - t_undrop)
            # The newest reading goes out after the reconnect (the outbox sends oldest first).
            _wait(f, n_undrop, _newest(s), RECOVER_LIMIT)
            before = _published(f.lines[:n_drop])
            mine = [m for m in _published(f.lines[n_drop:]) if m not in before]
            _wait_ledger(cloud, device_id, mine, RECOVER_LIMIT)
            recovers.append(time.monotonic() - t_undrop)
            queued.append(len(mine))
        # The end: every event the firmware made is in the ledger once, with its value.
        time.sleep(1)
        pub = _published(f.lines)
        _wait_ledger(cloud, device_id, list(pub), RECOVER_LIMIT)
        effects = _effects(cloud, device_id)
        crashes = sum("Traceback" in x for x in f.lines) + (f.proc.poll() is not None)
        epochs = {m.rsplit("-", 1)[0] for m in pub}
        numbers = sorted(int(m.rsplit("-", 1)[1]) for m in pub)
        lost = [m for m in pub if m not in effects]
        twice = [m for m, (n, _) in effects.items() if n != 1 or m not in pub]
        wrong = [m for m, (_, v) in pub.items()
                 if m in effects and json.loads(effects[m][1]) != json.loads(v)]
        statuses = dict(cloud.ledger("SELECT status, COUNT(*) FROM received WHERE device_id = ?"
                                     " GROUP BY status", (device_id,)))
        replayed = statuses.get("replayed", 0)
        record("half-open link (netns, iptables DROP both ways)", faults=CYCLES, sent=len(pub),
               lost=len(lost), crashes=crashes, detect_s=max(detects), recover_s=max(recovers),
               keepalive_s=KEEPALIVE, limit_s=DETECT_LIMIT,
               detect_each_s=[round(d, 2) for d in detects],
               reconnect_each_s=[round(r, 2) for r in reconnects],
               recover_each_s=[round(r, 2) for r in recovers], queued_each=queued,
               replayed=replayed, run_s=round(time.monotonic() - t_start, 1),
               notes="down reasons: " + "; ".join(reasons))
        assert not crashes, f.log(60)
        assert len(epochs) == 1 and numbers == list(range(len(numbers))), (
            "message_ids made but never published: %s" % numbers)
        assert not lost and not twice and not wrong, (lost, twice, wrong)
        # A resend is the same bytes under the same message_id: "replayed", never "conflict".
        assert set(statuses) <= {"accepted", "replayed"}, statuses
        assert "keepalive timeout" in reasons[1], reasons  # the quiet cycle: the keepalive noticed
    finally:
        if netns.iptables and netns.dropping():
            netns.undrop()  # so the firmware's goodbye (revoke) is quick
        f.stop()
