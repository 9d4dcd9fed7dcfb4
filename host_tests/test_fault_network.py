"""Fault suite, network: the firmware on the unix port against the local cloud over TLS,
with the link and the cloud failing under a live QoS 1 stream.

1. The broker restarted 12 times during the stream (through the admin API, and by
   killing mosquitto with SIGTERM or SIGKILL first).
2. The ack service silent for 2 minutes while readings keep coming.
3. An MQTT-aware TLS proxy (host_tests/mqtt_proxy.py) between the firmware and the
   broker: PUBACKs to the device dropped (the next one, or each with a probability),
   and links cut in the middle of a packet, in both directions, on every packet type
   of the session, while desired commands come in.

Every test proves its claim on the cloud's ledger, not on the firmware's log: each
message_id the firmware created (all of one run's ids are consecutive) has exactly one
`accepted` row in `received` (repeats are `replayed`) and nothing else; each reading
fed in is in `effects` exactly once; each desired_id is answered once. Times (detect,
recover) are host-side: the arrival of the firmware's log line, polled every 5 ms.
"""
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter

import pytest

import fault_report
from mqtt_proxy import CONNACK, CONNECT, PUBACK, PUBLISH, SUBACK, SUBSCRIBE, MqttProxy
from realer_harness import free_port, mosquitto_pids

pytestmark = pytest.mark.fault

ACK_TIMEOUT_S = 30  # outbox.Outbox(ack_timeout_ms=30000)
PUBACK_TIMEOUT_S = 10  # mqtt.MQTTClient(puback_timeout_ms=10000)
BACKOFF_CAP_S = 60  # backoff.Backoff(cap_ms=60000)
_MID = re.compile(r'"message_id": "([^"]+)"')


# --- helpers ------------------------------------------------------------------

class Clock:
    """Host arrival time of each firmware log line (polled every 5 ms)."""

    def __init__(self, f):
        self.f = f
        self.at = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            n = len(self.f.lines)
            if n > len(self.at):
                now = time.monotonic()
                self.at.extend([now] * (n - len(self.at)))
            time.sleep(0.005)

    def find(self, pattern, start=0, timeout=30, after=None):
        """(index, line, host time) of the first line from index `start` (and arrived at
        or after host time `after`) matching `pattern`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.at):
                if rx.search(self.f.lines[i]) and (after is None or self.at[i] >= after):
                    return i, self.f.lines[i], self.at[i]
                i += 1
            if self.f.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError("firmware exited (%s) before %r; log:\n%s" % (
                    self.f.proc.poll(), pattern, self.f.log(80)))
            if time.monotonic() > deadline:
                raise AssertionError("no line %r within %s s; log:\n%s" % (pattern, timeout, self.f.log(60)))
            time.sleep(0.01)

    def stop(self):
        self._stop.set()


class Feeder:
    """A new temperature reading every 0.3-0.5 s, each value used once (0.5 apart, never
    the provisioned 21.5), from a thread; `values` in the order fed."""

    def __init__(self, f, period=(0.3, 0.5), seed=1):
        self.f = f
        self.period = period
        self.values = []
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()
        return self

    def _run(self):
        k = 0
        while not self._stop.is_set():
            v = -39.75 + 0.5 * (k % 330)
            k += 1
            self.f.set_input("temperature", v)
            self.values.append(v)
            self._stop.wait(self._rng.uniform(*self.period))

    def stop(self):
        self._stop.set()
        self._t.join(5)
        return self.values


def _firmware(fw, cloud, capacity=None, routes=("temperature", "relay")):
    """A firmware whose temperature route reports every change and no heartbeat, so each
    reading fed in is one event."""
    f = fw(cloud, routes=list(routes))

    def edit(c):
        for r in c["routes"].values():
            if r["name"] == "temperature":
                r.update(interval=86400, deadband=0)
        if capacity:
            c["outbox"] = {"capacity": capacity}
    f.edit_config(edit)
    return f


def _created(f):
    """Every message_id this run of the firmware created: the published ones span them
    (one run's ids are `<epoch>-<n>` with n consecutive), gaps included."""
    mids = [m for line in f.lines if " publish: " in line for m in _MID.findall(line)]
    assert mids, f.log()
    epoch = {m.rsplit("-", 1)[0] for m in mids}
    assert len(epoch) == 1, epoch
    ns = [int(m.rsplit("-", 1)[1]) for m in mids]
    e = epoch.pop()
    return ["%s-%d" % (e, n) for n in range(min(ns), max(ns) + 1)]


def _received(cloud, mids):
    """{message_id: [status, ...]} from the ledger's `received` table, in arrival order."""
    got = {m: [] for m in mids}
    for mid, status in cloud.ledger("SELECT message_id, status FROM received ORDER BY id"):
        if mid in got:
            got[mid].append(status)
    return got


def _wait_drained(cloud, f, fed, timeout):
    """Wait until every created message_id has been accepted and the last reading fed in is
    in the ledger; returns the created list."""
    deadline = time.monotonic() + timeout
    while True:
        mids = _created(f)
        acc = {m for m, s in _received(cloud, mids).items() if "accepted" in s}
        last = fed[-1] if fed else None
        vals = [json.loads(v) for (v,) in cloud.ledger(
            "SELECT value FROM effects WHERE route_id LIKE 'rte_temperature%'")]
        if len(acc) == len(mids) and (last is None or last in vals):
            return mids
        if time.monotonic() > deadline:
            return mids
        time.sleep(0.5)


def _check_ledger(cloud, f, fed):
    """The ledger against what the firmware created and what was fed in. Returns figures
    and asserts: nothing lost, nothing accepted twice, nothing but accepted/replayed."""
    mids = _created(f)
    rec = _received(cloud, mids)
    lost = [m for m, s in rec.items() if s.count("accepted") == 0]
    twice = [m for m, s in rec.items() if s.count("accepted") > 1]
    other = {m: s for m, s in rec.items() if set(s) - {"accepted", "replayed"}}
    temp = [json.loads(v) for (v,) in cloud.ledger(
        "SELECT value FROM effects WHERE route_id LIKE 'rte_temperature%' AND message_id LIKE ?",
        (mids[0].rsplit("-", 1)[0] + "-%",))]
    counts = Counter(temp)
    missing = [v for v in fed if counts[v] == 0]
    dup_values = sorted(v for v, n in counts.items() if n > 1)
    figures = {"sent": len(mids), "lost": len(lost) + len(missing), "dup": len(twice) + len(dup_values),
               "replayed": sum(s.count("replayed") for s in rec.values()),
               "fed": len(fed)}
    assert not lost, ("created but never accepted", lost, f.log(80))
    assert not missing, ("readings fed in but not in the ledger", missing)
    assert not twice, ("accepted twice", twice)
    assert not dup_values, ("a reading in the ledger under two message_ids", dup_values)
    assert not other, ("statuses other than accepted/replayed", other)
    return figures


def _crashes(f):
    bad = [x for x in f.lines if "Traceback" in x or "MemoryError" in x or "on_message" in x
           or "RuntimeError" in x]
    return len(bad) + (f.proc.poll() is not None)


def _through_proxy(own_cloud, fw):
    """A cloud whose catalog hands out the proxy's port, the proxy (presenting the cloud's
    own server certificate), and a firmware (not started) for that cloud:
    (cloud, proxy, firmware, proxy port)."""
    port = free_port()
    cloud = own_cloud("--broker-url", "mqtts://localhost:%d" % port)
    pki = os.path.join(cloud.state, "pki")
    proxy = MqttProxy(port, "localhost", cloud.mqtt_port, os.path.join(pki, "server.pem"),
                      os.path.join(pki, "server.key"), cloud.ca).start()
    return cloud, proxy, _firmware(fw, cloud), port


def test_proxy_reads_whole_packets():
    """The proxy's framing: one whole packet per read, multi-byte lengths, PUBLISH fields."""
    import asyncio

    from firmware.net import mqtt as fw_mqtt
    from mqtt_proxy import parse_publish, read_packet

    big = bytes(fw_mqtt.encode_publish("t/a", b"x" * 300, 1, 513, True))  # 2-byte length
    ack = fw_mqtt.encode_puback(7)

    async def run():
        r = asyncio.StreamReader()
        r.feed_data(big + ack + big[:5])
        r.feed_eof()
        got = [await read_packet(r), await read_packet(r)]
        with pytest.raises(asyncio.IncompleteReadError):
            await read_packet(r)
        return got
    (p1, h1), (p2, h2) = asyncio.run(run())
    assert (p1, h1) == (big, 3) and (p2, h2) == (ack, 2)
    assert parse_publish(p1, h1) == (513, True, "t/a", b"x" * 300)


# --- 1. the broker restarted under a QoS 1 stream --------------------------------

def test_broker_restarts_under_a_qos1_stream(own_cloud, fw):
    t_start = time.monotonic()
    cloud = own_cloud()
    f = _firmware(fw, cloud)
    f.start()
    clock = Clock(f)
    clock.find(r"ack: temperature accepted", timeout=30)
    feeder = Feeder(f).start()
    rng = random.Random(7)
    detect, recover, modes = [], [], Counter()
    try:
        for i in range(12):
            time.sleep(rng.uniform(1.0, 2.5))  # the stream runs
            n0 = len(f.lines)
            mode = ("api", "sigterm", "sigkill")[i % 3]
            modes[mode] += 1
            t0 = time.monotonic()
            if mode == "api":
                cloud.admin("POST", "/admin/broker/restart")
            else:
                pids = mosquitto_pids(cloud.state)
                assert len(pids) == 1, pids
                os.kill(pids[0], signal.SIGTERM if mode == "sigterm" else signal.SIGKILL)
                clock.find(r"mqtt: down", n0, timeout=10)
                time.sleep(rng.uniform(0.2, 1.5))  # down a while: reconnects are refused
                cloud.admin("POST", "/admin/broker/restart")  # starts it again
            t1 = time.monotonic()
            i_down, _, t_down = clock.find(r"mqtt: down", n0, timeout=10)
            detect.append(t_down - t0)
            _, _, t_ack = clock.find(r"ack: \S+ (accepted|replayed)", i_down, timeout=BACKOFF_CAP_S + ACK_TIMEOUT_S)
            recover.append(t_ack - t1)
        time.sleep(1.5)
    finally:
        fed = feeder.stop()
    _wait_drained(cloud, f, fed, timeout=ACK_TIMEOUT_S + 15)
    crashes = _crashes(f)
    sessions = sum(1 for x in f.lines if "mqtt: connected" in x)
    figures = {}
    try:
        figures = _check_ledger(cloud, f, fed)
    finally:
        fault_report.record(
            "broker restarts under a QoS 1 stream", faults=len(detect), crashes=crashes,
            applied_twice=0, detect_s=max(detect) if detect else None,
            recover_s=max(recover) if recover else None, sessions=sessions,
            recover_median_s=sorted(recover)[len(recover) // 2] if recover else None,
            wall_s=time.monotonic() - t_start, **figures,
            notes="restarts: %d admin API, %d SIGTERM, %d SIGKILL (then restarted); a reading every"
                  " 0.3-0.5 s" % (modes["api"], modes["sigterm"], modes["sigkill"]))
    assert crashes == 0, f.log(80)
    assert sessions >= 13
    # Recovery within the firmware's own backoff cap (60 s) after every restart.
    assert max(recover) < BACKOFF_CAP_S, recover


# --- 2. the ack service silent for two minutes ------------------------------------

SILENCE_S = 120


def test_ack_service_silent_for_two_minutes(own_cloud, fw):
    t_start = time.monotonic()
    cloud = own_cloud()
    f = _firmware(fw, cloud, capacity=256, routes=("temperature",))
    f.start()
    clock = Clock(f)
    clock.find(r"ack: temperature accepted", timeout=30)
    n0 = len(f.lines)
    cloud.fault("ack", silent=True)
    t0 = time.monotonic()
    before = cloud.ledger("SELECT COUNT(*) FROM effects")[0][0]
    acked_before = {m for (m,) in cloud.ledger("SELECT message_id FROM effects")}
    feeder = Feeder(f, period=(0.9, 1.1)).start()
    spill_path = os.path.join(f.flash, "outbox.dat")
    try:
        # The ack is overdue after 30 s: the firmware sends again (same message_id) and spills.
        _, _, t_overdue = clock.find(r"publish: temperature .*\(again, try 2\)", n0, timeout=ACK_TIMEOUT_S + 10)
        time.sleep(max(0, SILENCE_S - (time.monotonic() - t0)))
    finally:
        fed = feeder.stop()
    # Still silent: nothing was accepted meanwhile, and the outbox is on flash.
    assert cloud.ledger("SELECT COUNT(*) FROM effects")[0][0] == before
    with open(spill_path, "rb") as fh:
        spilled = [m.decode() for m in re.findall(rb'"message_id": "([^"]+)"', fh.read())]
    pending = [m for m in _created(f) if m not in acked_before]
    assert len(pending) >= SILENCE_S - 10, len(pending)
    # Everything unacknowledged but the newest few (the spill is write-behind, every 5 s)
    # is on flash, and nothing acknowledged is.
    assert set(pending[:-8]) <= set(spilled), sorted(set(pending[:-8]) - set(spilled))
    assert set(spilled) <= set(pending), sorted(set(spilled) - set(pending))
    assert spilled == sorted(spilled, key=lambda m: int(m.rsplit("-", 1)[1]))
    evicted = [x for x in f.lines if "evict" in x or "dropped" in x]
    n1 = len(f.lines)
    t1 = time.monotonic()  # the queued feed data is acked while this call runs
    cloud.fault("ack", silent=False)
    _, _, t_ack = clock.find(r"ack: temperature accepted", n1, timeout=30)
    _wait_drained(cloud, f, fed, timeout=60)
    t_drained = time.monotonic()
    crashes = _crashes(f)
    created = _created(f)
    sends = Counter(m for line in f.lines if " publish: " in line for m in _MID.findall(line))
    figures = {}
    try:
        figures = _check_ledger(cloud, f, fed)
        # Drained in order: the cloud accepted them in the order they happened.
        order = [m for (m,) in cloud.ledger("SELECT message_id FROM effects WHERE message_id LIKE ?"
                                            " ORDER BY sequence_number",
                                            (created[0].rsplit("-", 1)[0] + "-%",))]
        assert order == created, "not drained in order"
    finally:
        fault_report.record(
            "ack service silent 2 min", faults=1, crashes=crashes, applied_twice=0,
            detect_s=t_overdue - t0, recover_s=t_ack - t1, drain_s=t_drained - t1,
            silence_s=t1 - t0, spilled=len(spilled), max_sends=max(sends.values()),
            wall_s=time.monotonic() - t_start, **figures,
            notes="a reading every ~1 s, outbox.capacity 256; detect = silence -> first resend"
                  " (ack timeout 30 s); recover = ack service back -> first accepted ack")
    assert crashes == 0, f.log(80)
    assert not evicted, evicted
    time.sleep(6)  # all acked: the spill file goes at the next write-behind
    assert not os.path.exists(spill_path)


# --- 3. an MQTT-aware proxy: PUBACKs dropped, links cut mid-packet -----------------

def test_dropped_pubacks_resend_with_dup_and_the_same_message_id(own_cloud, fw):
    t_start = time.monotonic()
    cloud, proxy, f, port = _through_proxy(own_cloud, fw)
    detect, recover = [], []
    try:
        f.start()
        clock = Clock(f)
        clock.find(r"mqtt: connected to localhost:%d" % port, timeout=30)
        clock.find(r"ack: temperature accepted", timeout=10)
        feeder = Feeder(f).start()
        try:
            # The next PUBACK vanishes, three times: the PUBACK timeout fires, the link is
            # dropped, the message goes again with DUP and its packet id after the reconnect.
            for _ in range(3):
                n0 = len(f.lines)
                proxy.drop_pubacks(1)
                while not proxy.dropped or proxy.dropped[-1][0] != proxy.connections:
                    time.sleep(0.02)
                t_drop = [t for t, what, _ in proxy.events if what == "drop"][-1]
                i, _, t_down = clock.find(r"mqtt: down: puback timeout", n0, timeout=PUBACK_TIMEOUT_S + 5)
                detect.append(t_down - t_drop)
                j, _, _ = clock.find(r"mqtt: connected", i, timeout=BACKOFF_CAP_S)
                _, _, t_ack = clock.find(r"ack: \S+ (accepted|replayed)", j, timeout=ACK_TIMEOUT_S)
                recover.append(t_ack - t_down)
            # Then each PUBACK dropped with a probability of 10 % for 20 s.
            proxy.drop_pubacks(p=0.1)
            time.sleep(20)
            proxy.drop_pubacks(0)
            n0 = len(f.lines)
            if any("puback timeout" in x for x in f.lines[-200:]):
                clock.find(r"mqtt: connected", max(0, n0 - 200), timeout=BACKOFF_CAP_S)
            time.sleep(PUBACK_TIMEOUT_S + 2)  # a drop of the last moments times out too
        finally:
            fed = feeder.stop()
        _wait_drained(cloud, f, fed, timeout=ACK_TIMEOUT_S + 15)
        crashes = _crashes(f)
        # Each dropped PUBACK's message went again on a later connection: DUP set, the same
        # packet id and the same bytes (the same message_id).
        pubs = [p for p in proxy.publishes if p[1] == "d2b"]
        not_resent = []
        for conn, pid in proxy.dropped:
            orig = [p for p in pubs if p[2] == conn and p[3] == pid]
            assert orig, (conn, pid)
            payload = orig[-1][6]
            again = [p for p in pubs if p[2] > conn and p[3] == pid and p[4] and p[6] == payload]
            if not again:
                not_resent.append((conn, pid, payload))
        timeouts = sum(1 for x in f.lines if "mqtt: down: puback timeout" in x)
        figures = {}
        try:
            figures = _check_ledger(cloud, f, fed)
        finally:
            fault_report.record(
                "dropped PUBACKs (proxy)", faults=len(proxy.dropped), crashes=crashes, applied_twice=0,
                detect_s=max(detect) if detect else None, recover_s=max(recover) if recover else None,
                puback_timeouts=timeouts, dup_resends=sum(1 for p in pubs if p[4]),
                connections=proxy.connections, wall_s=time.monotonic() - t_start, **figures,
                notes="3 single drops, then 10%% of PUBACKs for 20 s; detect = drop -> puback timeout"
                      " (%d s by design); recover = link down -> next app ack" % PUBACK_TIMEOUT_S)
        assert crashes == 0, f.log(80)
        assert not not_resent, ("a dropped PUBACK's message was not resent with DUP", not_resent)
        assert len(proxy.dropped) >= 4
        assert timeouts >= 3
        # The PUBACK timeout is the requirement: noticed within it (plus the watchdog's step).
        assert max(detect) < PUBACK_TIMEOUT_S + 3, detect
    finally:
        proxy.stop()


# Each round: the cuts to arm (direction, packet type, topic part) and whether a desired
# command goes out right after arming. A CONNACK/SUBACK/CONNECT/SUBSCRIBE cut fires on the
# reconnect that the round's first cut causes.
_ROUNDS = [
    ([("d2b", PUBLISH, "rte_temperature")], False),
    ([("b2d", PUBLISH, "/acks")], False),
    ([("b2d", PUBLISH, "/desired")], True),
    ([("d2b", PUBLISH, "rte_relay")], True),
    ([("d2b", PUBACK, None)], True),
    ([("b2d", PUBACK, None)], False),
    ([("d2b", PUBLISH, "rte_temperature"), ("b2d", CONNACK, None)], False),
    ([("b2d", PUBLISH, "/acks"), ("b2d", SUBACK, None)], True),
    ([("b2d", PUBACK, None), ("d2b", CONNECT, None)], False),
    ([("d2b", PUBACK, None), ("d2b", SUBSCRIBE, None)], True),
]


def test_links_cut_mid_packet_in_both_directions(own_cloud, fw):
    t_start = time.monotonic()
    cloud, proxy, f, port = _through_proxy(own_cloud, fw)
    detect, recover, desired = [], [], []
    level = False
    try:
        f.start()
        clock = Clock(f)
        clock.find(r"mqtt: connected to localhost:%d" % port, timeout=30)
        clock.find(r"ack: temperature accepted", timeout=10)
        feeder = Feeder(f).start()
        try:
            for cuts, with_desired in _ROUNDS * 2:
                n0 = len(f.lines)
                done0 = len(proxy.cuts_done)
                for d, kind, topic in cuts:
                    proxy.cut(d, kind, topic)
                if with_desired:
                    level = not level
                    desired.append(cloud.desired("relay", level, valid_for=120))
                deadline = time.monotonic() + 20
                while len(proxy.cuts_done) < done0 + len(cuts) and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert len(proxy.cuts_done) == done0 + len(cuts), ("cut never fired", cuts, f.log(30))
                for t_cut, _, _, _ in proxy.cuts_done[done0:]:
                    i, _, t_down = clock.find(r"mqtt: down", n0, timeout=10, after=t_cut - 0.01)
                    detect.append(t_down - t_cut)
                    n0 = i + 1
                t_last = proxy.cuts_done[-1][0]
                j, _, _ = clock.find(r"mqtt: connected", n0, timeout=BACKOFF_CAP_S)
                _, _, t_ack = clock.find(r"ack: \S+ (accepted|replayed)", j, timeout=ACK_TIMEOUT_S)
                recover.append(t_ack - t_last)
                if with_desired:  # answered before the next round
                    did = desired[-1]["desired_id"]
                    deadline = time.monotonic() + ACK_TIMEOUT_S + 10
                    while not cloud.ledger("SELECT 1 FROM desired WHERE desired_id=? AND ack_status IS NOT NULL",
                                           (did,)) and time.monotonic() < deadline:
                        time.sleep(0.1)
                time.sleep(random.uniform(0.3, 1.0))
        finally:
            fed = feeder.stop()
        _wait_drained(cloud, f, fed, timeout=ACK_TIMEOUT_S + 15)
        crashes = _crashes(f)
        # Each desired_id: applied once by the firmware, answered once in the ledger.
        applied = Counter(m.group(1) for x in f.lines
                          for m in [re.search(r"-> applied \(now \w+\) desired_id=(\S+)", x)] if m)
        answers = {}
        for d in desired:
            rows = cloud.ledger("SELECT status, error_type FROM received WHERE desired_id=? ORDER BY id",
                                (d["desired_id"],))
            answers[d["desired_id"]] = rows
        twice = [did for did, n in applied.items() if n > 1]
        twice += [did for did, rows in answers.items() if [s for s, _ in rows].count("accepted") > 1
                  or any(e == "desired_already_answered" for _, e in rows)]
        unanswered = [did for did, rows in answers.items() if not any(s == "accepted" for s, _ in rows)]
        ack_status = dict(cloud.ledger("SELECT desired_id, ack_status FROM desired"))
        ignored = sum(1 for x in f.lines if "<= last handled" in x)
        by_dir = Counter(d for _, d, _, _ in proxy.cuts_done)
        by_kind = Counter(k for _, _, k, _ in proxy.cuts_done)
        figures = {}
        try:
            figures = _check_ledger(cloud, f, fed)
        finally:
            fault_report.record(
                "links cut mid-packet (proxy)", faults=len(proxy.cuts_done), crashes=crashes,
                applied_twice=len(set(twice)), detect_s=max(detect) if detect else None,
                recover_s=max(recover) if recover else None, commands=len(desired),
                redelivered_ignored=ignored, connections=proxy.connections,
                wall_s=time.monotonic() - t_start, **figures,
                notes="cuts d2b %d / b2d %d; %s" % (by_dir["d2b"], by_dir["b2d"], ", ".join(
                    "%s %d" % kv for kv in sorted(by_kind.items()))))
        assert crashes == 0, f.log(80)
        assert not twice, ("a desired command applied or answered twice", twice, answers)
        assert not unanswered, ("a desired command never answered", unanswered, answers)
        assert all(ack_status[d["desired_id"]] == "applied" for d in desired), ack_status
        assert all(applied[d["desired_id"]] == 1 for d in desired), applied
        assert f.output("relay") is level
        assert by_dir["d2b"] >= 8 and by_dir["b2d"] >= 8, by_dir
        assert max(recover) < BACKOFF_CAP_S, recover
    finally:
        proxy.stop()
