"""firmware.gateway: desired state and acks, driven without a network.

The Gateway is made with object.__new__ (its __init__ builds a TLS context and
an MQTT client) and given only what _on_desired/_on_ack/report use.
Fixture-free: runs under pytest (CPython) and on the unix port (mp_runner.py).
"""
import asyncio
import json

from firmware import compat
from firmware.cloud import realer
from firmware.compat import ticks_add, ticks_diff, ticks_ms
from firmware.gateway import Gateway
from firmware.outbox import Outbox
from firmware.routes import CommandRoute
from fakes import FakeRelay

compat._quiet = True

EXP = "2026-11-21T21:09:26.371Z"
EXP_MS = realer.rfc3339_ms(EXP)


class FakeStore:
    def __init__(self, seq=None):
        self.seq = dict(seq or {})
        self.n = 0
        self.set_calls = []
        self.kv = {}

    def last_sequence(self, route_id):
        return self.seq.get(route_id, -1)

    def set_sequence(self, route_id, seq):
        self.set_calls.append((route_id, seq))
        self.seq[route_id] = seq

    def next_message_id(self):
        self.n += 1
        return "e1-%d" % self.n

    def put(self, key, value):
        self.kv[key] = value

    def get(self, key, default=None):
        return self.kv.get(key, default)


class FakeCloud:
    def __init__(self, now=None):
        self.now = now
        self.catalog = None
        self.heard = None

    def server_now_ms(self):
        return self.now

    def published(self, ms, at):
        self.heard = (ms, at)


def _gateway(value_type="boolean", lo=None, hi=None, level=False, server_now=None, seq=None):
    gw = object.__new__(Gateway)
    gw.store = FakeStore(seq)
    relay = FakeRelay(level)
    route = CommandRoute("r-relay", {"name": "pump", "safe": False}, relay, value_type, lo, hi)
    gw.routes = {"r-relay": route}
    gw.cloud = FakeCloud(server_now)
    gw.outbox = Outbox()
    gw.work = asyncio.Event()
    gw._seen, gw._nseen = {}, 0
    gw._healthy = True  # boot.healthy() is not this test's concern
    return gw, route, relay


def _desired(seq=1, value=True, did="dsr_1", valid_for=30, expires_at=EXP, **extra):
    d = {"version": 1, "desired_id": did, "sequence_number": seq,
         "valid_for_seconds": valid_for, "value": value}
    if expires_at is not None:
        d["expires_at"] = expires_at
    d.update(extra)
    return json.dumps(d).encode()


def _queued(gw):
    return [json.loads(e.payload) for e in gw.outbox.entries]


# --- desired state ----------------------------------------------------------------

def test_new_sequence_applies_and_queues_ack():
    gw, route, relay = _gateway(server_now=EXP_MS - 10000)
    gw._on_desired(route, _desired(seq=3, value=True, did="dsr_a"))
    assert relay.sets == [True]
    q = _queued(gw)
    assert len(q) == 1
    assert q[0]["desired_id"] == "dsr_a"
    assert q[0]["value"] is True
    assert "report_status" not in q[0]  # applied
    assert q[0]["message_id"] == "e1-1"
    assert realer.rfc3339_ms(q[0]["value_received_at"]) is not None
    e = gw.outbox.entries[0]
    assert (e.mid, e.route, e.is_ack) == ("e1-1", "r-relay", True)
    assert gw.store.set_calls == [("r-relay", 3)]
    assert gw.work.is_set()


def test_applied_reports_the_value_now_on_the_relay():
    gw, route, relay = _gateway(level=True)
    gw._on_desired(route, _desired(seq=1, value=0))
    assert relay.sets == [False]
    q = _queued(gw)
    assert q[0]["value"] is False


def test_lower_or_equal_sequence_is_ignored():
    for seq in (5, 4, 0):
        gw, route, relay = _gateway(seq={"r-relay": 5})
        gw._on_desired(route, _desired(seq=seq))
        assert relay.sets == [], seq
        assert len(gw.outbox) == 0, seq
        assert gw.store.set_calls == [], seq
        assert not gw.work.is_set()


def test_redelivered_message_is_answered_once():
    gw, route, relay = _gateway()
    msg = _desired(seq=1, value=True, did="dsr_once")
    gw._on_desired(route, msg)
    gw._on_desired(route, msg)  # QoS 1 redelivery / retained copy after reconnect
    assert relay.sets == [True]
    assert len(gw.outbox) == 1


def test_expired_by_server_time_is_stale_with_current_value():
    gw, route, relay = _gateway(level=False, server_now=EXP_MS + 5000)
    gw._on_desired(route, _desired(seq=2, value=True, did="dsr_old"))
    assert relay.sets == []
    q = _queued(gw)
    assert len(q) == 1
    assert q[0]["report_status"] == "stale"
    assert q[0]["value"] is False
    assert q[0]["desired_id"] == "dsr_old"
    assert gw.store.set_calls == [("r-relay", 2)]  # answered: not handled again


def test_before_expiry_by_server_time_is_applied():
    gw, route, relay = _gateway(server_now=EXP_MS - 1000)
    gw._on_desired(route, _desired(seq=2, value=True))
    assert relay.sets == [True]
    assert "report_status" not in _queued(gw)[0]


def test_a_desired_message_tells_the_cloud_clock_when_it_was_published():
    gw, route, relay = _gateway(server_now=EXP_MS - 1000)
    before = ticks_ms()
    gw._on_desired(route, _desired(seq=2, value=True, valid_for=30))
    ms, at = gw.cloud.heard
    assert ms == EXP_MS - 30000  # expires_at - valid_for_seconds
    assert 0 <= ticks_diff(at, before) < 1000
    gw.cloud.heard = None
    gw._on_desired(route, _desired(seq=3, value=False, expires_at=None))  # nothing to learn
    assert gw.cloud.heard is None


def test_no_server_time_yet_and_fresh_is_applied():
    # No Date header seen: expires_at (long past by any clock) cannot decide.
    gw, route, relay = _gateway(server_now=None)
    gw._on_desired(route, _desired(seq=1, value=True, expires_at="2000-01-01T00:00:00Z"))
    assert relay.sets == [True]
    q = _queued(gw)
    assert q[0]["value"] is True and "report_status" not in q[0]


def test_without_expires_at_fresh_is_applied():
    gw, route, relay = _gateway(server_now=EXP_MS + 1000000)
    gw._on_desired(route, _desired(seq=1, value=True, expires_at=None))
    assert relay.sets == [True]
    assert "report_status" not in _queued(gw)[0]


def test_reused_desired_id_is_refused_and_not_answered_again():
    gw, route, relay = _gateway(level=False)
    gw._on_desired(route, _desired(seq=1, value=True, did="dsr_once"))
    gw._on_desired(route, _desired(seq=2, value=False, did="dsr_once"))
    assert relay.sets == [True]
    assert [q.get("desired_id") for q in _queued(gw)] == ["dsr_once"]
    assert gw.store.set_calls == [("r-relay", 1), ("r-relay", 2)]  # not looked at again
    gw._on_desired(route, _desired(seq=3, value=False, did="dsr_new"))
    assert relay.sets == [True, False]


def test_bad_value_is_rejected_with_current_value():
    for bad in ("on", 2, None, 1.5, [True]):
        gw, route, relay = _gateway(level=False)
        gw._on_desired(route, _desired(seq=4, value=bad, did="dsr_bad"))
        assert relay.sets == [], bad
        q = _queued(gw)
        assert len(q) == 1, bad
        assert q[0]["report_status"] == "rejected", bad
        assert q[0]["value"] is False, bad
        assert q[0]["desired_id"] == "dsr_bad"
        assert gw.store.set_calls == [("r-relay", 4)]


def test_integer_route_out_of_range_rejected():
    gw, route, relay = _gateway("integer", 0, 100, level=0)
    gw._on_desired(route, _desired(seq=1, value=101))
    assert relay.sets == []
    q = _queued(gw)
    assert q[0]["report_status"] == "rejected" and q[0]["value"] == 0


def test_integer_route_fractional_value_rejected():
    # A desired 2.5 on an integer route must end as 'rejected', not as an exception.
    gw, route, relay = _gateway("integer", 0, 100, level=0)
    gw._on_desired(route, _desired(seq=1, value=2.5))
    assert relay.sets == []
    q = _queued(gw)
    assert len(q) == 1 and q[0]["report_status"] == "rejected"


def test_integer_route_integral_float_applied():
    gw, route, relay = _gateway("integer", 0, 100, level=0)
    gw._on_desired(route, _desired(seq=1, value=50.0))
    assert relay.sets == [50]
    q = _queued(gw)
    assert q[0]["value"] == 50 and "report_status" not in q[0]


def test_hostile_payloads_change_nothing():
    hostile = (b"not json", b"{", b"[]", b"", _desired(version=2),
               _desired(seq=-1), _desired(seq=True), _desired(did=""),
               _desired(valid_for=0), _desired(valid_for=86401),
               json.dumps({"version": 1, "desired_id": "d", "sequence_number": 1,
                           "valid_for_seconds": 30}).encode())
    for raw in hostile:
        gw, route, relay = _gateway()
        gw._on_desired(route, raw)
        assert relay.sets == [], raw
        assert len(gw.outbox) == 0, raw
        assert gw.store.set_calls == [], raw
        assert gw._seen == {}, raw


def test_payload_over_the_catalogs_max_is_refused_unparsed():
    gw, route, relay = _gateway()
    cat = type("Cat", (), {})()
    cat.max_payload = 300
    gw.cloud.catalog = cat
    gw._topics = {"t/desired": ("desired", route)}
    fit = _desired(seq=1, value=True, pad="x" * (300 - len(_desired(seq=1, value=True, pad=""))))
    big = _desired(seq=2, value=False, pad="x" * 300)
    gw._on_message("t/desired", memoryview(bytearray(big)))
    assert relay.sets == [] and len(gw.outbox) == 0 and gw.store.set_calls == []
    assert len(fit) == 300
    gw._on_message("t/desired", memoryview(bytearray(fit)))
    assert relay.sets == [True]


def test_seen_table_stays_bounded():
    gw, route, relay = _gateway()
    for i in range(40):
        gw._on_desired(route, _desired(seq=i + 1, value=bool(i % 2), did="dsr_%d" % i))
    assert sorted(gw._seen) == sorted("dsr_%d" % i for i in range(24, 40))  # the newest 16
    assert len(gw.outbox) == 40
    assert gw.store.seq["r-relay"] == 40


# --- acks ---------------------------------------------------------------------------

def _ack(mid, status, retryable=False, etype=None):
    d = {"message_id": mid, "status": status, "retryable": retryable, "sequence_number": 9,
         "version": 1}
    if etype:
        d["error"] = {"type": etype, "message": "x"}
    return json.dumps(d).encode()


def test_ack_accepted_removes_entry():
    gw, route, relay = _gateway()
    gw._on_desired(route, _desired(seq=1))
    mid = gw.outbox.entries[0].mid
    gw.work.clear()
    gw._on_ack(_ack(mid, "accepted"))
    assert len(gw.outbox) == 0
    assert gw.outbox.delivered == 1
    assert route.last_ack == "accepted"
    assert gw.work.is_set()


def test_ack_retryable_error_keeps_entry():
    gw, route, relay = _gateway()
    gw._on_desired(route, _desired(seq=1))
    e = gw.outbox.entries[0]
    p = e.payload
    gw.outbox.sent(e)
    gw._on_ack(_ack(e.mid, "error", True, "internal_error"))
    assert len(gw.outbox) == 1
    assert gw.outbox.entries[0].payload is p
    assert (gw.outbox.delivered, gw.outbox.dropped) == (0, 0)
    assert route.last_ack == "error"
    assert gw.outbox.ready(ticks_ms()) == []  # waits for its retry time


def test_ack_rejected_drops_entry():
    gw, route, relay = _gateway()
    gw._on_desired(route, _desired(seq=1))
    gw._on_ack(_ack(gw.outbox.entries[0].mid, "rejected", False, "value_mismatch"))
    assert len(gw.outbox) == 0 and gw.outbox.dropped == 1
    assert route.last_ack == "rejected"


def test_ack_unknown_or_unreadable_changes_nothing():
    gw, route, relay = _gateway()
    gw._on_desired(route, _desired(seq=1))
    gw.work.clear()
    for raw in (_ack("e1-999", "accepted"), b"not json", b"[]", b'{"message_id":"e1-1"}'):
        gw._on_ack(raw)
        assert len(gw.outbox) == 1, raw
        assert not gw.work.is_set(), raw
    assert route.last_ack is None


def test_applied_level_is_kept_for_restore_last():
    gw, route, relay = _gateway(level=False)
    gw._on_desired(route, _desired(seq=1, value=True))
    assert relay.level is True
    assert gw.store.kv == {"relay:r-relay": True}


class _Cat:
    ack_topic = "acks"

    def __init__(self, routes):
        self.routes = routes


def test_catalog_cannot_widen_what_the_driver_takes():
    gw, route, relay = _gateway(value_type="number", lo=0, hi=100)
    gw.cloud.catalog = _Cat({"r-relay": {"type": "integer", "min": -50, "max": 80,
                                         "desired": "d/r-relay"}})
    gw._bind_catalog()
    assert route.value_type == "number" and (route.lo, route.hi) == (0, 80)
    assert gw._topics["d/r-relay"] == ("desired", route)
    gw2, route2, _ = _gateway(value_type="boolean")
    gw2.cloud.catalog = _Cat({"r-relay": {"type": "integer", "min": 0, "max": 100}})
    gw2._bind_catalog()
    assert route2.value_type == "boolean" and route2.lo is None


def _leased(lease_ms):
    gw, route, relay = _gateway(level=False)
    route.lease_ms = lease_ms
    gw.link_down = asyncio.Event()
    gw._down_since = ticks_ms()
    return gw, route, relay


def test_lease_safe_after_the_cloud_is_gone_for_the_lease():
    gw, route, relay = _leased(1000)
    route.apply(True)
    gw._lease(route)  # link up (down event clear): nothing happens
    assert relay.level is True and len(gw.outbox) == 0
    gw.link_down.set()
    gw._down_since = ticks_add(ticks_ms(), -500)
    gw._lease(route)
    assert relay.level is True  # down for 0.5 s of a 1 s lease
    gw._down_since = ticks_add(ticks_ms(), -1000)
    gw._lease(route)
    assert relay.level is False
    d = json.loads(gw.outbox.entries[0].payload)
    assert d["value"] is False and "desired_id" not in d  # reported as a local change


def test_lease_safe_when_the_command_window_passes():
    gw, route, relay = _leased(60000)
    gw._on_desired(route, _desired(seq=1, value=True, valid_for=30))
    assert relay.level is True and route.valid_until is not None
    gw._lease(route)
    assert relay.level is True
    route.valid_until = ticks_add(ticks_ms(), -1)
    gw._lease(route)
    assert relay.level is False and route.valid_until is None
