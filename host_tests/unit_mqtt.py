"""firmware.net.mqtt: byte-exact encoders and the client against a FakeStream broker.

Fixture-free: runs under pytest (CPython) and on the unix port (mp_runner.py).
"""
import asyncio

from fakes import FakeStream, raises as _raises, run
from firmware import compat
from firmware.compat import ticks_diff, ticks_ms, wait_for_ms
from firmware.net import mqtt
from firmware.net.mqtt import MQTTClient, MQTTError, MQTTRefused

compat._quiet = True
CONNACK = b"\x20\x02\x00\x00"
PINGREQ = b"\xc0\x00"


def _pub(topic, payload, qos=0, pid=0, dup=False):
    return bytes(mqtt.encode_publish(topic, payload, qos, pid, dup))


async def _connected(stream=None, **kw):
    got = []
    # the payload is a view of the client's receive buffer, valid during the call: copy it
    c = MQTTClient(lambda t, p: got.append((t, bytes(p))), **kw)
    s = stream or FakeStream(CONNACK)
    await c.connect(s, s, "gw1", None, None, timeout_ms=500)
    return c, s, got


async def _closed_by(data, **kw):
    """Feed `data` to a connected client; returns (reason, messages delivered, stream)."""
    c, s, got = await _connected(**kw)
    s.feed(data)
    await wait_for_ms(c.down.wait(), 1000)
    await asyncio.sleep(0.01)  # the loop keeps running after the reader closed the link
    return c.reason, got, s


async def _araises(exc, aw):
    try:
        await aw
    except exc as e:
        return e
    raise AssertionError("no %s" % exc.__name__)


# --- encoders ---------------------------------------------------------------

def test_encode_connect_with_credentials():
    want = (b"\x10\x19\x00\x04MQTT\x04\xc2\x00\x3c"
            b"\x00\x03gw1\x00\x04user\x00\x02pw")
    assert bytes(mqtt.encode_connect("gw1", "user", "pw", 60)) == want
    assert bytes(mqtt.encode_connect(b"gw1", b"user", b"pw", 60)) == want


def test_encode_connect_anonymous_and_flags():
    assert bytes(mqtt.encode_connect("c", None, None, 300, clean=False)) == \
        b"\x10\x0d\x00\x04MQTT\x04\x00\x01\x2c\x00\x01c"
    assert bytes(mqtt.encode_connect("c", "u", None, 0)) == \
        b"\x10\x10\x00\x04MQTT\x04\x82\x00\x00\x00\x01c\x00\x01u"
    _raises(ValueError, mqtt.encode_connect, "c", None, "pw", 60)
    _raises(ValueError, mqtt.encode_connect, "c", None, None, 65536)


def test_encode_publish_qos0_qos1_dup_retain():
    assert bytes(mqtt.encode_publish("a/b", b"hi")) == b"\x30\x07\x00\x03a/bhi"
    assert bytes(mqtt.encode_publish(b"a/b", "hi", qos=1, pid=0x0102)) == \
        b"\x32\x09\x00\x03a/b\x01\x02hi"
    assert bytes(mqtt.encode_publish("t", b"", 1, 7, dup=True, retain=True)) == \
        b"\x3b\x05\x00\x01t\x00\x07"
    assert bytes(mqtt.encode_publish("t", b"x", retain=True)) == b"\x31\x04\x00\x01tx"
    _raises(ValueError, mqtt.encode_publish, "t", b"", 1, 0)  # QoS 1 needs a packet id
    _raises(ValueError, mqtt.encode_publish, "t", b"", 1, 65536)


def test_encode_subscribe_and_small_packets():
    assert bytes(mqtt.encode_subscribe(10, [("a/#", 1), (b"b", 0)])) == \
        b"\x82\x0c\x00\x0a\x00\x03a/#\x01\x00\x01b\x00"
    assert bytes(mqtt.encode_puback(0x1234)) == b"\x40\x02\x12\x34"
    assert bytes(mqtt.encode_pingreq()) == PINGREQ
    assert bytes(mqtt.encode_disconnect()) == b"\xe0\x00"


def test_remaining_length_boundaries():
    # topic "t" takes 3 bytes of the remaining length; the payload fills the rest
    for rem, head in ((127, b"\x30\x7f"), (128, b"\x30\x80\x01"),
                      (16383, b"\x30\xff\x7f"), (16384, b"\x30\x80\x80\x01")):
        p = mqtt.encode_publish("t", bytes(rem - 3))
        assert bytes(p[:len(head) + 3]) == head + b"\x00\x01t", rem
        assert len(p) == len(head) + rem, rem
    _raises(ValueError, mqtt._header, 0x30, 268435456)  # a fifth length byte: refused


# --- connect ----------------------------------------------------------------

def test_connect_one_write_and_session_flag():
    async def t():
        c, s, _ = await _connected(keepalive=60)
        assert s.writes == [bytes(mqtt.encode_connect("gw1", None, None, 60))]
        assert c.up.is_set() and not c.down.is_set()
        c.close("end")
        s2 = FakeStream(b"\x20\x02\x01\x00")
        assert await c.connect(s2, s2, "gw1", "u", "p") is True
        assert c.up.is_set() and not c.down.is_set() and c.reason is None
        c.close("end")
    run(t())


def test_connack_refused_code_5():
    async def t():
        s = FakeStream(b"\x20\x02\x00\x05")
        c = MQTTClient(None)
        e = await _araises(MQTTRefused, c.connect(s, s, "gw1", "u", "bad"))
        assert e.code == 5
        assert s.closed and c.down.is_set() and not c.up.is_set()
    run(t())


def test_connack_garbled_missing_or_eof():
    async def t():
        for data, close in ((b"\x30\x02\x00\x00", False), (b"", False), (b"\x20", True)):
            s = FakeStream(data)
            if close:
                s.eof()
            c = MQTTClient(None)
            await _araises(MQTTError, c.connect(s, s, "gw1", None, None, timeout_ms=100))
            assert s.closed and c.down.is_set() and c.reason, data
    run(t())


# --- publish / PUBACK -------------------------------------------------------

def test_publish_qos1_inflight_until_puback():
    async def t():
        c, s, _ = await _connected()
        pid = await c.publish("gw/up", b"data", qos=1)
        assert pid == 1 and len(s.writes) == 2
        assert s.writes[1] == b"\x32\x0d\x00\x05gw/up\x00\x01data"
        assert c.inflight[1][:3] == ("gw/up", b"data", False)
        assert not await c.wait_puback(pid, 50)
        waiter = asyncio.create_task(c.wait_puback(pid, 1000))
        await asyncio.sleep(0.01)
        s.feed(b"\x40\x02\x00\x01")
        assert await waiter
        assert c.inflight == {} and await c.wait_puback(pid, 10)
        assert await c.publish("gw/up", "q0", qos=0) == 0
        assert len(s.writes) == 3 and c.inflight == {}
        c.close("end")
    run(t())


def test_publish_refused_when_not_connected():
    async def t():
        c = MQTTClient(None)
        await _araises(MQTTError, c.publish("t", b"x"))
        c, s, _ = await _connected()
        c.close("gone")
        await _araises(MQTTError, c.publish("t", b"x"))
        assert len(s.writes) == 1 and c.inflight == {}
    run(t())


def test_puback_timeout_closes_link():
    async def t():
        c, s, _ = await _connected(puback_timeout_ms=200)
        pid = await c.publish("t", b"x")
        await wait_for_ms(c.down.wait(), 1000)
        assert c.reason == "puback timeout" and s.closed
        assert pid in c.inflight  # kept for resend_inflight() after the reconnect
        assert not await c.wait_puback(pid, 100)
    run(t())


def test_write_failure_closes_and_raises():
    async def t():
        c, s, _ = await _connected()

        def broken(data):
            raise OSError(104)
        s.write = broken
        await _araises(MQTTError, c.publish("t", b"x"))
        assert c.down.is_set() and c.reason.startswith("write failed") and c.inflight == {}
    run(t())


def test_resend_inflight_sets_dup_in_sending_order():
    async def t():
        c, s, _ = await _connected()
        c._pid = 65534  # the ids wrap: 65535 was sent before 1
        assert await c.publish("a", b"1") == 65535
        assert await c.publish("b", b"2", retain=True) == 1
        c.close("link lost")
        s2 = FakeStream(CONNACK)
        await c.connect(s2, s2, "gw1", None, None)
        await c.resend_inflight()
        assert s2.writes[1:] == [_pub("a", b"1", 1, 65535, True),
                                 bytes(mqtt.encode_publish("b", b"2", 1, 1, True, True))]
        assert s2.writes[1][0] == 0x3a and s2.writes[2][0] == 0x3b
        s2.feed(b"\x40\x02\xff\xff\x40\x02\x00\x01")
        assert await c.wait_puback(1, 500) and c.inflight == {}
        c.close("end")
    run(t())


def test_packet_ids_skip_inflight_and_wrap():
    c = MQTTClient(None)
    c.inflight[2] = ("t", b"", False, ticks_ms())
    c._pid = 1
    assert c._next_pid() == 3
    c._pid = 65535
    assert c._next_pid() == 1


# --- subscribe --------------------------------------------------------------

def test_subscribe_returns_granted_codes():
    async def t():
        c, s, _ = await _connected()
        task = asyncio.create_task(c.subscribe([("a", 1), ("b", 1)], 1000))
        await asyncio.sleep(0.01)
        assert s.writes[1] == b"\x82\x0a\x00\x01\x00\x01a\x01\x00\x01b\x01"
        s.feed(b"\x90\x04\x00\x01\x01\x80")
        assert await task == [1, 0x80]
        c.close("end")
    run(t())


def test_subscribe_without_suback_closes():
    async def t():
        c, s, _ = await _connected()
        await _araises(MQTTError, c.subscribe([("a", 1)], 100))
        assert c.reason == "suback timeout" and s.closed
    run(t())


# --- incoming ---------------------------------------------------------------

def test_incoming_publish_delivered_then_acked():
    async def t():
        c, s, got = await _connected()
        s.feed(_pub("cmd/x", b"q0") + _pub("cmd/y", b"q1", 1, 7))
        big = bytes(range(256)) * 2  # a two-byte remaining length
        s.feed(_pub("cmd/big", big, 1, 8, dup=True) + _pub("cmd/big", big, 1, 8, dup=True))
        await asyncio.sleep(0.05)
        assert got == [("cmd/x", b"q0"), ("cmd/y", b"q1"), ("cmd/big", big), ("cmd/big", big)]
        assert type(got[0][0]) is str and type(got[0][1]) is bytes
        assert s.writes[1:] == [b"\x40\x02\x00\x07", b"\x40\x02\x00\x08", b"\x40\x02\x00\x08"]
        assert c.up.is_set()
        c.close("end")
    run(t())


def test_on_message_error_means_no_puback():
    async def t():
        c, s, got = await _connected()

        def handler(topic, payload):
            if bytes(payload) == b"bad":
                raise ValueError("cannot handle")
            got.append(bytes(payload))
        c.on_message = handler
        s.feed(_pub("t", b"bad", 1, 3) + _pub("t", b"ok", 1, 4))
        await asyncio.sleep(0.05)
        assert got == [b"ok"] and s.writes[1:] == [b"\x40\x02\x00\x04"]
        assert c.up.is_set()
        c.close("end")
    run(t())


def test_oversized_packet_closes_before_reading_body():
    async def t():
        reason, got, s = await _closed_by(b"\x30\xe8\x07" + b"x" * 10, max_packet=64)
        assert reason == "packet too large" and got == []
        assert len(s.buf) == 10  # the body was never read
        c, s, got = await _connected()  # the loop is still fine for the next link
        s.feed(_pub("t", b"x"))
        await asyncio.sleep(0.01)
        assert got == [("t", b"x")]
        c.close("end")
    run(t())


def test_unexpected_or_malformed_packets_close():
    async def t():
        cases = ((b"\x10\x00", "unexpected"), (b"\x82\x06\x00\x01\x00\x01a\x01", "unexpected"),
                 (b"\x00\x00", "unexpected"), (b"\xf0\x00", "unexpected"),
                 (CONNACK, "unexpected"), (b"\x62\x02\x00\x01", "unexpected"),
                 (b"\x40\x03\x00\x01\x00", "unexpected"),
                 (b"\x30\x03\x00\x10a", "malformed publish"),
                 (b"\x30\x01\x00", "malformed publish"),
                 (b"\x32\x03\x00\x01a", "malformed publish"),
                 (_pub("t", b"x", 2, 5), "qos 2"), (b"\x30\x03\x00\x01\xff", "bad topic"),
                 (b"\x30\xff\xff\xff\xff\x01", "malformed length"))
        for data, why in cases:
            reason, got, s = await _closed_by(data)
            assert reason.startswith(why), (data, reason)
            assert got == [] and s.closed, data
    run(t())


def test_broker_eof_closes():
    async def t():
        c, s, _ = await _connected()
        s.eof()
        await wait_for_ms(c.down.wait(), 500)
        assert c.reason == "closed by broker" and not c.up.is_set()
    run(t())


# --- keepalive --------------------------------------------------------------

def test_keepalive_pings_then_declares_silent_link_dead():
    async def t():
        c, s, _ = await _connected(keepalive=1)
        t0 = ticks_ms()
        await wait_for_ms(c.down.wait(), 2100)
        dt = ticks_diff(ticks_ms(), t0)
        assert c.reason == "keepalive timeout" and 1400 <= dt <= 2000, dt
        assert PINGREQ in s.writes and s.closed
    run(t())


def test_keepalive_deadline_is_met_between_watchdog_steps():
    # The last packet arrives between two watchdog steps (250 ms apart at keepalive 1):
    # the link is declared dead 1.5 x keepalive after it, not at the step after that.
    async def t():
        c, s, _ = await _connected(keepalive=1)
        await asyncio.sleep(0.13)
        s.feed(b"\xd0\x00")  # a PINGRESP: the last sign of life
        await asyncio.sleep(0.01)
        t0 = ticks_ms()
        await wait_for_ms(c.down.wait(), 2100)
        dt = ticks_diff(ticks_ms(), t0)
        assert c.reason == "keepalive timeout" and 1480 <= dt <= 1560, dt
    run(t())


def test_keepalive_answered_pings_keep_link_up():
    async def t():
        c, s, _ = await _connected(keepalive=1)
        answered = 0
        t0 = ticks_ms()
        while ticks_diff(ticks_ms(), t0) < 1800:
            await asyncio.sleep(0.02)
            while answered < s.writes.count(PINGREQ):
                s.feed(b"\xd0\x00")
                answered += 1
        assert c.up.is_set() and not c.down.is_set() and answered >= 2
        c.close("end")
    run(t())


def test_disconnect_sends_packet_and_never_raises():
    async def t():
        c, s, _ = await _connected()
        await c.disconnect()
        assert s.writes[-1] == b"\xe0\x00" and s.closed
        assert c.reason == "disconnected" and c.down.is_set() and c._tasks == ()
        await c.disconnect()  # twice: still fine
        c, s, _ = await _connected()

        def broken(data):
            raise OSError(32)
        s.write = broken
        await c.disconnect()
        assert c.down.is_set() and s.closed
    run(t())
