"""firmware.outbox: events wait for their application ack, retries, eviction.

Fixture-free: runs under pytest (CPython) and on the unix port (mp_runner.py).
Times are passed explicitly (ticks_add on ticks_ms) so nothing sleeps.
"""
from firmware.compat import ticks_add, ticks_ms
from firmware.outbox import Outbox


def _mids(entries):
    return [e.mid for e in entries]


def _box(n=3, **kw):
    ob = Outbox(**kw)
    for i in range(n):
        ob.add("m-%d" % i, "r-temp", b'{"i":%d}' % i)
    return ob


def test_add_keeps_id_payload_route_in_order():
    ob = Outbox()
    p = b'{"message_id":"m-1"}'
    e = ob.add("m-1", "r-temp", p)
    ob.add("m-2", "r-relay", b"x", True)
    assert len(ob) == 2
    assert (e.mid, e.route, e.payload) == ("m-1", "r-temp", p)
    assert e.payload is p
    assert not e.is_ack
    assert ob.entries[1].is_ack
    assert _mids(ob.ready()) == ["m-1", "m-2"]
    assert ob.next_due_ms() == 0


def test_empty_outbox():
    ob = Outbox()
    assert len(ob) == 0
    assert ob.ready() == []
    assert ob.next_due_ms() is None


def test_accepted_and_replayed_remove_and_count_delivered():
    ob = _box(3)
    assert ob.ack("m-0", "accepted", False).mid == "m-0"
    assert ob.ack("m-2", "replayed", False).mid == "m-2"
    assert _mids(ob.entries) == ["m-1"]
    assert ob.delivered == 2
    assert ob.dropped == 0
    assert ob.ack("m-0", "accepted", False) is None  # already settled
    assert ob.delivered == 2
    assert ob.last_status["r-temp"] == "replayed"


def test_rejected_and_conflict_remove_and_count_dropped():
    ob = _box(3)
    ob.ack("m-1", "rejected", False)
    ob.ack("m-0", "conflict", False)
    assert _mids(ob.entries) == ["m-2"]
    assert ob.dropped == 2
    assert ob.delivered == 0
    assert ob.ack("m-1", "rejected", False) is None


def test_non_retryable_error_is_dropped():
    ob = _box(1)
    ob.ack("m-0", "error", False)
    assert len(ob) == 0 and ob.dropped == 1


def test_unknown_message_id_is_none_and_changes_nothing():
    ob = _box(2)
    assert ob.ack("nope", "accepted", False) is None
    assert ob.ack(None, "rejected", False) is None
    assert len(ob) == 2
    assert (ob.delivered, ob.dropped) == (0, 0)


def test_sent_entry_waits_for_its_ack():
    ob = _box(2, ack_timeout_ms=30000)
    now = ticks_ms()
    ob.sent(ob.entries[0], now)
    assert ob.entries[0].tries == 1
    assert _mids(ob.ready(now)) == ["m-1"]
    assert _mids(ob.ready(ticks_add(now, 29999))) == ["m-1"]


def test_ack_timeout_makes_sent_entry_ready_again():
    ob = _box(1, ack_timeout_ms=30000)
    e = ob.entries[0]
    p = e.payload
    now = ticks_ms()
    ob.sent(e, now)
    assert ob.ready(now) == []
    assert ob.next_due_ms(now) == 30000
    later = ticks_add(now, 30000)
    assert _mids(ob.ready(later)) == ["m-0"]
    assert ob.ready(later)[0].payload is p
    assert ob.next_due_ms(later) == 0


def test_retryable_error_stays_then_ready_with_same_payload():
    ob = _box(1, retry_ms=2000, retry_cap_ms=60000)
    e = ob.entries[0]
    p = e.payload
    now = ticks_ms()
    ob.sent(e, now)
    assert ob.ack("m-0", "error", True, now) is e
    assert len(ob) == 1
    assert (ob.delivered, ob.dropped) == (0, 0)
    assert ob.ready(now) == []
    due = ob.next_due_ms(now)
    assert 0 < due <= 60000, due
    assert ob.ready(ticks_add(now, due - 1)) == []
    again = ob.ready(ticks_add(now, due))
    assert _mids(again) == ["m-0"]
    assert again[0].payload is p  # same bytes, same message_id
    assert ob.last_status["r-temp"] == "error"


def test_retry_delay_grows_and_is_capped():
    ob = _box(1, retry_ms=1000, retry_cap_ms=5000)
    e = ob.entries[0]
    now = ticks_ms()
    delays = []
    for _ in range(6):
        ob.sent(e, now)
        ob.ack("m-0", "error", True, now)
        delays.append(ob.next_due_ms(now))
    assert delays[1] > delays[0], delays
    assert max(delays) == 5000, delays
    assert delays[-1] == 5000


def test_retryable_then_accepted_settles():
    ob = _box(1)
    now = ticks_ms()
    ob.sent(ob.entries[0], now)
    ob.ack("m-0", "error", True, now)
    ob.sent(ob.entries[0], ticks_add(now, 60000))
    ob.ack("m-0", "accepted", False)
    assert len(ob) == 0 and ob.delivered == 1


def test_requeue_skips_payloads_the_client_resends():
    ob = _box(3)
    now = ticks_ms()
    a, b, c = ob.entries
    for e in (a, b):
        ob.sent(e, now)
    assert _mids(ob.ready(now)) == ["m-2"]
    ob.requeue([id(a.payload)])
    assert _mids(ob.ready(now)) == ["m-1", "m-2"]  # a stays with the MQTT client


def test_requeue_without_skip_makes_all_sent_ready():
    ob = _box(2)
    now = ticks_ms()
    for e in ob.entries:
        ob.sent(e, now)
    assert ob.ready(now) == []
    ob.requeue()
    assert _mids(ob.ready(now)) == ["m-0", "m-1"]


def test_requeue_leaves_retry_wait_alone():
    ob = _box(1)
    now = ticks_ms()
    ob.sent(ob.entries[0], now)
    ob.ack("m-0", "error", True, now)
    ob.requeue()
    assert ob.ready(now) == []


def test_capacity_evicts_oldest_sample_first():
    ob = Outbox(capacity=3)
    ob.add("a-1", "r-relay", b"a1", True)
    ob.add("s-1", "r-temp", b"s1")
    ob.add("s-2", "r-temp", b"s2")
    ob.add("s-3", "r-temp", b"s3")
    assert _mids(ob.entries) == ["a-1", "s-2", "s-3"]
    assert ob.evicted == 1
    assert ob.ack("s-1", "accepted", False) is None  # gone from the index too
    assert ob.delivered == 0


def test_capacity_never_evicts_an_ack_while_a_sample_remains():
    ob = Outbox(capacity=3)
    ob.add("a-1", "r-relay", b"a1", True)
    ob.add("a-2", "r-relay", b"a2", True)
    ob.add("s-1", "r-temp", b"s1")  # the newest, but the only sample
    ob.add("a-3", "r-relay", b"a3", True)
    assert _mids(ob.entries) == ["a-1", "a-2", "a-3"]
    ob.add("a-4", "r-relay", b"a4", True)  # only acks left: kept, over capacity
    assert _mids(ob.entries) == ["a-1", "a-2", "a-3", "a-4"]
    assert ob.evicted == 1
    for i in range(5, 9):
        ob.add("a-%d" % i, "r-relay", b"a", True)
    assert len(ob) == 6 and _mids(ob.entries)[0] == "a-3"  # at twice the capacity the oldest goes
    assert ob.evicted == 3


def test_capacity_keeps_length_bounded():
    ob = Outbox(capacity=4)
    for i in range(20):
        ob.add("m-%d" % i, "r-temp", b"x")
    assert len(ob) == 4
    assert _mids(ob.entries) == ["m-16", "m-17", "m-18", "m-19"]
    assert sorted(ob.by_mid) == sorted(["m-16", "m-17", "m-18", "m-19"])
    assert ob.evicted == 16


def test_when_full_drop_newest_sample_refuses_the_new_one():
    ob = Outbox(capacity=2, when_full="drop_newest_sample")
    ob.add("s-1", "r", b"1")
    ob.add("s-2", "r", b"2")
    assert ob.add("s-3", "r", b"3") is None
    assert _mids(ob.entries) == ["s-1", "s-2"] and ob.evicted == 1
    ob.add("a-1", "r", b"a", True)  # an ack still gets in: the oldest sample goes
    assert _mids(ob.entries) == ["s-2", "a-1"]


def test_spill_and_load_keep_ids_bytes_and_order():
    from fakes import exists, rmtree, tmpdir
    d = tmpdir()
    try:
        path = d + "/outbox.dat"
        ob = Outbox(spill_path=path)
        ob.add("e-1", "r-temp", b'{"message_id": "e-1", "value": 1}')
        ob.add("e-2", "r-relay", b'{"message_id": "e-2", "value": true, "desired_id": "d"}', True)
        ob.add("e-3", "r-temp", b'{"message_id": "e-3", "value": 3}')
        ob.ack("e-3", "accepted", False)
        assert ob.dirty
        ob.spill()
        assert not ob.dirty and ob.spills == 1 and exists(path) and not exists(path + ".tmp")
        with open(path, "ab") as f:
            f.write(b"r-temp\t0\t{\"message_id\": \"e-9")  # a torn last line
        again = Outbox(spill_path=path)
        assert again.load() == 2
        assert _mids(again.entries) == ["e-1", "e-2"]
        assert again.entries[1].is_ack and again.entries[0].payload == ob.entries[0].payload
        again.ack("e-1", "accepted", False)
        again.ack("e-2", "replayed", False)
        again.spill()  # nothing left: the file goes
        assert not exists(path)
        assert Outbox(spill_path=path).load() == 0
    finally:
        rmtree(d)


def test_overdue_only_after_the_ack_timeout():
    ob = Outbox(ack_timeout_ms=1000)
    e = ob.add("e-1", "r", b"x")
    ob.sent(e, now=0)
    assert not ob.overdue(now=999)
    assert ob.overdue(now=1000)
