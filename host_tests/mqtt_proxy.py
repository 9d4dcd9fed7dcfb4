"""An MQTT-aware TLS proxy for fault tests (CPython asyncio; toxiproxy and netem are not here).

    proxy = MqttProxy(port, "localhost", cloud.mqtt_port, cert, key, ca).start()
    proxy.drop_pubacks(3)                   # the next 3 PUBACKs to the device vanish
    proxy.drop_pubacks(p=0.2)               # or each one with a probability
    proxy.cut("b2d", kind=PUBLISH)          # the next PUBLISH to the device: half of it, then the link dies
    proxy.cut("d2b", kind=PUBACK)           # the same toward the broker
    proxy.stop()

It terminates TLS toward the device with the emulator's server certificate (so the
firmware's verified TLS accepts it) and opens its own TLS connection to the real
broker for each device connection. Both directions are read packet by packet (the
fixed header's type and remaining length), so a fault hits one chosen MQTT packet:
a dropped PUBACK is one whole packet never forwarded; a cut writes the first half of
one packet and then aborts both TCP connections (no TLS close_notify, no MQTT
DISCONNECT), as a link that dies in the middle of a transfer.

Everything it did is kept in `events` (host monotonic time, what, details), and the
PUBLISH packets it saw in `publishes` (direction, connection number, packet id, DUP,
topic, payload), so a test can check the device's resends against the drops.
"""
import asyncio
import random
import ssl
import threading
import time

CONNECT, CONNACK, PUBLISH, PUBACK = 0x1, 0x2, 0x3, 0x4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x8, 0x9, 0xC, 0xD, 0xE
NAMES = {CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
         SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
         DISCONNECT: "DISCONNECT"}
DIRECTIONS = ("d2b", "b2d")  # device -> broker, broker -> device


async def read_packet(reader):
    """One whole MQTT packet (fixed header included) as bytes; EOFError at a clean end."""
    first = await reader.readexactly(1)
    hdr = bytearray(first)
    n, shift = 0, 0
    while True:
        b = (await reader.readexactly(1))[0]
        hdr.append(b)
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ValueError("malformed remaining length")
    body = await reader.readexactly(n) if n else b""
    return bytes(hdr) + body, len(hdr)


def parse_publish(pkt, hlen):
    """(packet id or 0, dup, topic, payload) of a PUBLISH packet."""
    flags = pkt[0] & 0x0F
    qos = (flags >> 1) & 3
    body = pkt[hlen:]
    tl = body[0] << 8 | body[1]
    topic = body[2:2 + tl].decode("utf-8", "replace")
    i = 2 + tl
    pid = 0
    if qos:
        pid = body[i] << 8 | body[i + 1]
        i += 2
    return pid, bool(flags & 0x08), topic, body[i:]


class _Cut:
    def __init__(self, direction, kind, topic, skip):
        self.direction, self.kind, self.topic, self.skip = direction, kind, topic, skip

    def matches(self, direction, kind, topic):
        if direction != self.direction or (self.kind is not None and kind != self.kind):
            return False
        if self.topic is not None and (topic is None or self.topic not in topic):
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        return True


class MqttProxy:
    def __init__(self, port, upstream_host, upstream_port, cert, key, ca, host="127.0.0.1",
                 server_name="localhost"):
        self.port, self.host = port, host
        self.upstream = (upstream_host, upstream_port)
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(cert, key)
        self.client_ctx = ssl.create_default_context(cafile=ca)
        self.server_name = server_name
        self._lock = threading.Lock()
        self._drop_n = 0
        self._drop_p = 0.0
        self._cuts = []
        self._rng = random.Random(5)
        self.events = []  # (monotonic, what, detail dict)
        self.publishes = []  # (monotonic, direction, conn, pid, dup, topic, payload bytes)
        self.connections = 0
        self.dropped = []  # packet ids of the PUBACKs dropped, with their connection number
        self.cuts_done = []  # (monotonic, direction, packet type name, conn)
        self._loop = None
        self._thread = None
        self._server = None
        self._conns = set()

    # --- control (any thread) ------------------------------------------------
    def drop_pubacks(self, n=0, p=0.0):
        """Drop the next `n` PUBACKs to the device, and each later one with probability `p`."""
        with self._lock:
            self._drop_n, self._drop_p = n, p

    def cut(self, direction, kind=None, topic=None, skip=0):
        """Arm a one-shot cut: the next packet going `direction` (of type `kind`, on a topic
        containing `topic`), after skipping `skip` matches, is half written, then both links die."""
        if direction not in DIRECTIONS:
            raise ValueError(direction)
        with self._lock:
            self._cuts.append(_Cut(direction, kind, topic, skip))

    def armed(self):
        with self._lock:
            return len(self._cuts)

    def disarm(self):
        with self._lock:
            self._cuts = []
            self._drop_n, self._drop_p = 0, 0.0

    def _event(self, what, **detail):
        self.events.append((time.monotonic(), what, detail))

    # --- life cycle ---------------------------------------------------------
    def start(self, timeout=10):
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._accept, self.host, self.port, ssl=self.server_ctx))
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="mqtt-proxy")
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self):
        if self._loop is None:
            return

        async def shut():
            self._server.close()
            for w in list(self._conns):
                w.transport.abort()
            await asyncio.sleep(0.05)
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    # --- the relay ----------------------------------------------------------
    async def _accept(self, dr, dw):
        with self._lock:
            self.connections += 1
            conn = self.connections
        self._event("accept", conn=conn)
        try:
            br, bw = await asyncio.wait_for(asyncio.open_connection(
                *self.upstream, ssl=self.client_ctx, server_hostname=self.server_name), 10)
        except (OSError, asyncio.TimeoutError) as e:
            self._event("upstream_failed", conn=conn, error=repr(e))
            dw.transport.abort()
            return
        self._conns.update((dw, bw))
        state = {"dead": False}
        pumps = [asyncio.ensure_future(self._pump(dr, bw, "d2b", conn, state, (dw, bw))),
                 asyncio.ensure_future(self._pump(br, dw, "b2d", conn, state, (dw, bw)))]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for p in pumps:
            p.cancel()
        for w in (dw, bw):
            if not state["dead"]:
                try:
                    w.close()
                except (OSError, RuntimeError):
                    pass
            self._conns.discard(w)
        self._event("closed", conn=conn)

    def _decide(self, direction, kind, topic):
        """'drop', 'cut' or None for this packet."""
        with self._lock:
            for c in self._cuts:
                if c.matches(direction, kind, topic):
                    self._cuts.remove(c)
                    return "cut"
            if direction == "b2d" and kind == PUBACK:
                if self._drop_n > 0:
                    self._drop_n -= 1
                    return "drop"
                if self._drop_p and self._rng.random() < self._drop_p:
                    return "drop"
        return None

    async def _pump(self, src, dst, direction, conn, state, writers):
        try:
            while True:
                pkt, hlen = await read_packet(src)
                kind = pkt[0] >> 4
                topic = None
                if kind == PUBLISH:
                    pid, dup, topic, payload = parse_publish(pkt, hlen)
                    self.publishes.append((time.monotonic(), direction, conn, pid, dup, topic, payload))
                action = self._decide(direction, kind, topic)
                if action == "drop":
                    pid = pkt[hlen] << 8 | pkt[hlen + 1]
                    self.dropped.append((conn, pid))
                    self._event("drop", conn=conn, pid=pid)
                    continue
                if action == "cut":
                    half = pkt[:max(1, len(pkt) // 2)]
                    dst.write(half)
                    try:
                        await dst.drain()
                    except OSError:
                        pass
                    await asyncio.sleep(0.05)  # let the half packet leave before the abort
                    state["dead"] = True
                    self.cuts_done.append((time.monotonic(), direction, NAMES.get(kind, hex(kind)), conn))
                    self._event("cut", conn=conn, direction=direction, kind=NAMES.get(kind),
                                sent=len(half), of=len(pkt))
                    for w in writers:
                        w.transport.abort()
                    return
                dst.write(pkt)
                await dst.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as e:
            self._event("eof", conn=conn, direction=direction, error=type(e).__name__)
