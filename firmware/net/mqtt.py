"""MQTT 3.1.1 client on an asyncio stream: QoS 0/1, keepalive, nothing blocks the loop.

    c = MQTTClient(on_message, keepalive=60)
    await c.connect(*(await tls.open_tls(host, 8883, ctx)), "gw-1", user, token)
    await c.subscribe([("gw/gw-1/cmd", 1)])
    pid = await c.publish("gw/gw-1/up", b"...", qos=1)
    await c.down.wait()  # c.reason says why; reconnect, then c.resend_inflight()

Not umqtt.simple: its QoS 1 publish blocks until PUBACK, it never pings, and
wait_msg() sets the socket blocking, so a half-open link freezes the loop.
Here a reader task owns the input, a watchdog task pings and declares the
link dead, and writers share a Lock (concurrent write+drain on MicroPython's
Stream duplicates bytes). Each packet is one buffer and one write(), and
tls.open_tls sets TCP_NODELAY: umqtt.simple writes a packet in 4+ pieces, so
with Nagle each QoS 1 publish waits ~44 ms for a delayed ACK (23 msg/s).
Failures close the link (nothing raises out of a task): `down` is set and
`reason` says why. QoS 1 messages stay in `inflight` until their PUBACK.
"""
import asyncio

from firmware.compat import const, ticks_ms, ticks_diff, wait_for_ms, log

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
_MAX_REMAINING = const(268435455)  # four varint bytes


class MQTTError(OSError):
    """The link failed or the broker broke the protocol; str() says why."""


class MQTTRefused(Exception):
    """CONNACK with a non-zero return code (1..5) in `.code`."""

    def __init__(self, code):
        super().__init__("connection refused, code %d" % code)
        self.code = code


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _header(kind, rem):
    """(packet buffer, offset of the body): the fixed header filled in, the body zeroed."""
    if rem > _MAX_REMAINING:
        raise ValueError("packet too large")
    buf = bytearray(2 + rem + (rem > 127) + (rem > 16383) + (rem > 2097151))
    buf[0] = kind
    i = 1
    while rem > 127:
        buf[i] = (rem & 0x7F) | 0x80
        rem >>= 7
        i += 1
    buf[i] = rem
    return buf, i + 1


def _u16(buf, i, v):
    if not 0 <= v <= 65535:
        raise ValueError("16-bit field")
    buf[i] = v >> 8
    buf[i + 1] = v & 0xFF
    return i + 2


def _put(buf, i, data):
    """A length-prefixed string at buf[i]; returns the next offset."""
    i = _u16(buf, i, len(data))
    buf[i:i + len(data)] = data
    return i + len(data)


def encode_connect(client_id, username, password, keepalive, clean=True):
    if password is not None and username is None:
        raise ValueError("password needs a username")
    fields = [_b(f) for f in (client_id, username, password) if f is not None]
    buf, i = _header(_CONNECT, 10 + sum(2 + len(f) for f in fields))
    i = _put(buf, i, b"MQTT")
    buf[i] = 4  # protocol level: 3.1.1
    buf[i + 1] = ((0x02 if clean else 0) | (0 if username is None else 0x80)
                  | (0 if password is None else 0x40))
    i = _u16(buf, i + 2, keepalive)
    for f in fields:
        i = _put(buf, i, f)
    return buf


def encode_publish(topic, payload, qos=0, pid=0, dup=False, retain=False):
    topic = _b(topic)
    payload = _b(payload)
    if qos not in (0, 1, 2) or (qos and not pid):
        raise ValueError("qos or packet id")
    rem = 2 + len(topic) + len(payload) + (2 if qos else 0)
    buf, i = _header(_PUBLISH | (0x08 if dup else 0) | qos << 1 | (1 if retain else 0), rem)
    i = _put(buf, i, topic)
    if qos:
        i = _u16(buf, i, pid)
    buf[i:] = payload
    return buf


def encode_subscribe(pid, topics):
    topics = [(_b(t), q) for t, q in topics]
    buf, i = _header(_SUBSCRIBE, 2 + sum(3 + len(t) for t, _ in topics))
    i = _u16(buf, i, pid)
    for t, q in topics:
        i = _put(buf, i, t)
        buf[i] = q
        i += 1
    return buf


def encode_puback(pid):
    return bytes((_PUBACK, 2, pid >> 8, pid & 0xFF))


def encode_pingreq():
    return bytes((_PINGREQ, 0))


def encode_disconnect():
    return bytes((_DISCONNECT, 0))


class MQTTClient:
    def __init__(self, on_message, keepalive=60, max_packet=4096, puback_timeout_ms=10000,
                 name="mqtt"):
        self.on_message = on_message
        self.keepalive = keepalive
        self.max_packet = max_packet
        # Every incoming packet is read into this one buffer and handed on as a memoryview:
        # a 4 KB packet then costs no 4 KB allocation (plus a payload copy), which a
        # fragmented 64 KB heap cannot always find. reserve() makes it once (the gateway
        # calls it at start, while the heap is whole); connect() makes it if nobody did.
        self._rbuf = None
        self.puback_timeout_ms = puback_timeout_ms
        self.name = name
        self.up = asyncio.Event()
        self.down = asyncio.Event()
        self.reason = None
        self.inflight = {}  # pid: (topic, payload, retain, sent_ms)
        self._pid = 0
        self._lock = asyncio.Lock()
        self._w = None  # the writer; the reader belongs to the reader task
        self._tasks = ()
        self._acks = {}  # pid: Event, for wait_puback()
        self._subs = {}  # pid: [Event, granted codes or None]
        self._rx = self._tx = self._ping = 0

    def reserve(self):
        """Make the receive buffer (once); the caller picks the tidiest moment for it."""
        if self._rbuf is None:
            self._rbuf = memoryview(bytearray(self.max_packet))

    async def connect(self, reader, writer, client_id, username, password, timeout_ms=15000):
        if self._w is not None:
            self.close("reconnect")
        self.reserve()
        self._w = writer
        self.reason = None
        self.down.clear()
        try:
            ack = await wait_for_ms(self._handshake(reader, encode_connect(
                client_id, username, password, self.keepalive)), timeout_ms)
        except asyncio.TimeoutError:  # before OSError: on CPython it is one
            raise self._fail("no CONNACK")
        except EOFError:
            raise self._fail("closed before CONNACK")
        except OSError as e:
            raise self._fail("connect: %s" % (e,))
        if ack[0] != _CONNACK or ack[1] != 2 or ack[2] & 0xFE:
            raise self._fail("bad CONNACK")
        if ack[3]:
            self.close("refused %d" % ack[3])
            raise MQTTRefused(ack[3])
        now = ticks_ms()
        self._rx = self._ping = now
        for pid, t in list(self.inflight.items()):  # resend_inflight() restarts their clocks
            self.inflight[pid] = t[:3] + (now,)
        self.up.set()
        self._tasks = (asyncio.create_task(self._read_loop(reader)),
                       asyncio.create_task(self._watchdog()))
        return bool(ack[2] & 1)

    async def _handshake(self, r, pkt):
        await self._send(pkt)
        return await r.readexactly(4)

    def _fail(self, reason):
        self.close(reason)
        return MQTTError(reason)

    async def _send(self, pkt):
        async with self._lock:
            await self._write(pkt)

    async def _write(self, pkt):  # the caller holds the lock
        w = self._w
        if w is None:
            raise MQTTError(self.reason or "not connected")
        self._tx = ticks_ms()
        try:
            w.write(pkt)
            await w.drain()
        except (OSError, EOFError) as e:
            if w is self._w:
                self.close("write failed: %s" % (e,))
            raise MQTTError("write failed")

    def _next_pid(self):
        if len(self.inflight) + len(self._subs) >= 65535:
            raise MQTTError("no free packet id")
        pid = self._pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self.inflight and pid not in self._subs:
                self._pid = pid
                return pid

    async def subscribe(self, topics, timeout_ms=10000):
        if not self.up.is_set():
            raise MQTTError("not connected")
        pid = self._next_pid()
        slot = [asyncio.Event(), None]
        self._subs[pid] = slot
        try:
            await self._send(encode_subscribe(pid, topics))
            await wait_for_ms(slot[0].wait(), timeout_ms)
        except asyncio.TimeoutError:
            raise self._fail("suback timeout")
        finally:
            self._subs.pop(pid, None)
        codes = slot[1]
        if codes is None:
            raise MQTTError(self.reason or "not connected")
        if len(codes) != len(topics):
            raise self._fail("bad SUBACK")
        return codes

    async def publish(self, topic, payload, qos=1, retain=False):
        """The packet id (0 for QoS 0) once written; after an MQTTError nothing is in flight."""
        if not self.up.is_set():
            raise MQTTError("not connected")
        if qos not in (0, 1):
            raise ValueError("qos 0 or 1")
        pid = self._next_pid() if qos else 0
        pkt = encode_publish(topic, payload, qos, pid, False, retain)
        if qos:
            self.inflight[pid] = (topic, payload, retain, ticks_ms())
        try:
            await self._send(pkt)
        except MQTTError:
            self.inflight.pop(pid, None)
            raise
        return pid

    async def wait_puback(self, pid, timeout_ms):
        """True once `pid` is acked (or not in flight); False on timeout or link down."""
        if pid not in self.inflight:
            return True
        if not self.up.is_set():
            return False
        ev = self._acks.get(pid) or self._acks.setdefault(pid, asyncio.Event())
        try:
            await wait_for_ms(ev.wait(), timeout_ms)
        except asyncio.TimeoutError:
            pass
        return pid not in self.inflight

    async def resend_inflight(self):
        """Republish every in-flight QoS 1 message with DUP=1, oldest packet id first."""
        last = self._pid
        async with self._lock:  # so no new publish overtakes the older ones
            for pid in sorted(self.inflight, key=lambda p: (p - last - 1) % 65536):
                t = self.inflight.get(pid)
                if t is None:  # acked meanwhile
                    continue
                self.inflight[pid] = (t[0], t[1], t[2], ticks_ms())
                await self._write(encode_publish(t[0], t[1], 1, pid, True, t[2]))

    async def disconnect(self):
        if self._w is not None:
            try:
                await wait_for_ms(self._send(encode_disconnect()), 2000)
            except (OSError, asyncio.TimeoutError):
                pass
        self.close("disconnected")

    def close(self, reason):
        """Drop the link at once: no packet, `down` set, tasks cancelled. Idempotent."""
        if self._w is None and self.down.is_set():
            return
        if self.reason is None:
            self.reason = reason
            log(self.name, "down: %s" % reason)
        self.up.clear()
        self.down.set()
        w, self._w = self._w, None
        if w is not None:
            try:
                w.close()
            except OSError:
                pass
        try:
            cur = asyncio.current_task()
        except RuntimeError:  # called outside the loop
            cur = None
        for t in self._tasks:
            if t is not cur:
                t.cancel()
        self._tasks = ()
        for ev in self._acks.values():  # waiters see the pid still in flight: False
            ev.set()
        self._acks = {}
        for slot in self._subs.values():
            slot[0].set()

    async def _read_loop(self, r):
        try:
            while True:
                hdr = await r.readexactly(2)
                kind, c = hdr[0], hdr[1]
                n, shift = c & 0x7F, 7
                while c & 0x80:
                    if shift > 21:
                        return self.close("malformed length")
                    c = (await r.readexactly(1))[0]
                    n |= (c & 0x7F) << shift
                    shift += 7
                self._rx = ticks_ms()
                if n > self.max_packet:  # before reading: a hostile length costs nothing
                    return self.close("packet too large")
                body = self._rbuf[:n]
                got = 0
                while got < n:
                    k = await r.readinto(body[got:])
                    if not k:
                        raise EOFError
                    got += k
                self._rx = ticks_ms()
                why = await self._handle(kind, body)
                if why:
                    return self.close(why)
        except EOFError:
            self.close("closed by broker")
        except (OSError, ValueError) as e:
            self.close("read failed: %s" % (e,))

    async def _handle(self, kind, body):
        """None when the packet was fine, else why the link must close. `body` is a view
        of the receive buffer: on_message gets a view of the payload, valid only during
        the call (parse it; do not keep it)."""
        n = len(body)
        t = kind & 0xF0
        if t == _PUBLISH:
            qos = (kind >> 1) & 3
            if qos > 1:
                return "qos %d publish" % qos
            i = 2 + (body[0] << 8 | body[1]) if n >= 2 else n + 1
            if i + (2 if qos else 0) > n:
                return "malformed publish"
            pid = 0
            if qos:
                pid = body[i] << 8 | body[i + 1]
                if not pid:
                    return "malformed publish"
            try:
                topic = str(body[2:i], "utf-8")
            except ValueError:  # UnicodeError on both runtimes
                return "bad topic"
            try:
                self.on_message(topic, body[i + (2 if qos else 0):])
            except Exception as e:  # noqa: BLE001 - the app's fault: no PUBACK, broker redelivers
                log(self.name, "on_message %s: %r" % (topic, e))
                return None
            if qos:
                await self._send(encode_puback(pid))
            return None
        if kind == _PUBACK and n == 2:
            pid = body[0] << 8 | body[1]
            self.inflight.pop(pid, None)
            ev = self._acks.pop(pid, None)
            if ev is not None:
                ev.set()
            return None
        if kind == _SUBACK and n >= 3:
            slot = self._subs.get(body[0] << 8 | body[1])
            if slot is not None:
                slot[1] = list(body[2:])
                slot[0].set()
            return None
        if kind == _PINGRESP and n == 0:
            return None
        return "unexpected packet 0x%02x" % kind

    async def _watchdog(self):
        ka = self.keepalive * 1000
        pa = self.puback_timeout_ms
        step = max(20, min(1000, ka // 4 if ka else 1000, pa // 4 if pa else 1000))
        half = ka // 2
        while True:
            wait = step
            if ka:  # wake at the keepalive deadline itself, not up to a step after it
                left = ka + half - ticks_diff(ticks_ms(), self._rx)
                if left < wait:
                    wait = max(1, left)
            await asyncio.sleep(wait / 1000)
            now = ticks_ms()
            if ka and ticks_diff(now, self._rx) >= ka + half:
                return self.close("keepalive timeout")
            if pa:
                for t in self.inflight.values():
                    if ticks_diff(now, t[3]) >= pa:
                        return self.close("puback timeout")
            # Ping when idle, and also when nothing came in for a while (QoS 0
            # traffic alone gets no answers): a healthy broker then answers
            # twice before the 1.5 x keepalive deadline.
            if (ka and ticks_diff(now, self._ping) >= half
                    and (ticks_diff(now, self._tx) >= half or ticks_diff(now, self._rx) >= half)
                    and not self._lock.locked()):
                self._ping = now
                try:
                    await wait_for_ms(self._send(encode_pingreq()), half)
                except (OSError, asyncio.TimeoutError):
                    return self.close("ping not written")
