"""Verified TLS: a client context that checks the server against our CA, and a connector.

The stock ``ssl.wrap_socket`` and ``requests`` default to CERT_NONE: they
would talk to anyone. Here every connection needs the CA (DER bytes) and the
server's name, and a failed check raises ValueError (MicroPython) or
ssl.SSLError (CPython), never a fallback to plain TCP.
"""
from firmware.compat import MICROPYTHON, wait_for_ms

_EINPROGRESS = 115
_IPPROTO_TCP = 6
_TCP_NODELAY = 1
_addr_cache = {}


def context(ca_der):
    """A client SSLContext that requires a certificate chain to `ca_der`."""
    if not ca_der:
        raise ValueError("no CA: a TLS connection needs cloud.ca")
    if MICROPYTHON:
        import tls
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED  # type: ignore[attr-defined]  # missing from the stubs
        ctx.load_verify_locations(ca_der)  # positional: the tls module takes no keywords
        return ctx
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]  # CPython ssl
    ctx.check_hostname = True  # type: ignore[attr-defined]  # CPython ssl
    ctx.load_verify_locations(cadata=ca_der)
    return ctx


def resolve(host, port):
    """getaddrinfo blocks the loop: resolve once per host and keep it."""
    key = (host, port)
    ai = _addr_cache.get(key)
    if ai is None:
        import socket
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        _addr_cache[key] = ai
    return ai


def forget(host, port):
    _addr_cache.pop((host, port), None)


async def open_tls(host, port, ctx, timeout_ms=15000):
    """(reader, writer) over verified TLS with TCP_NODELAY, within `timeout_ms`.

    On MicroPython both are the same asyncio Stream. The handshake completes on
    the first write; callers write at once, so certificate errors surface then.
    """
    if not MICROPYTHON:
        import asyncio
        return await wait_for_ms(asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=host), timeout_ms)
    return await wait_for_ms(_open_mp(host, port, ctx), timeout_ms)


async def _open_mp(host, port, ctx):
    import asyncio
    import socket
    ai = resolve(host, port)
    s = socket.socket(ai[0], ai[1], ai[2])
    try:
        s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
    except OSError:
        pass  # a port without TCP_NODELAY still works, only slower
    s.setblocking(False)
    try:
        s.connect(ai[-1])
    except OSError as e:
        if e.errno != _EINPROGRESS:
            s.close()
            raise
    raw = s
    try:
        s = ctx.wrap_socket(s, server_hostname=host, do_handshake_on_connect=False)
    except (OSError, ValueError):
        s.close()
        raise
    s.setblocking(False)
    stream = Stream(s, raw)
    try:
        await _writable(s)
    except (OSError, asyncio.CancelledError):  # a deadline cancels us: no half-open socket left
        s.close()
        raise
    return stream, stream


def _writable(s):
    # MicroPython's asyncio awaits a generator that yields an IO-queue entry.
    from asyncio import core  # type: ignore[attr-defined]  # MicroPython asyncio internals
    yield core._io_queue.queue_write(s)


def _readable(s):
    from asyncio import core  # type: ignore[attr-defined]  # MicroPython asyncio internals
    yield core._io_queue.queue_read(s)


class Stream:
    """The TLS socket as the reader and writer the HTTP and MQTT clients use (MicroPython).

    asyncio's own Stream waits on the socket before every read and write. Waiting on a TLS
    object takes select's slow path (poll it, sleep, poll again: measured 1-2 ms per wait
    on the unix port, 5.8 ms per QoS 1 publish + PUBACK in all). Here a read or write goes
    to the socket first and waits only when it would block; after the handshake, reads
    wait on the TCP socket itself, which select watches with the kernel. A read that gets
    nothing from a readable TCP socket (half a TLS record) just waits again.
    """

    def __init__(self, s, raw):
        self.s = s
        self._raw = raw
        self._up = False  # the handshake is over once a read returned data
        self._out = b""

    async def read(self, n):
        """Up to n bytes; b"" at the end of the stream."""
        while True:
            d = self.s.read(n)
            if d is not None:
                self._up = True
                return d
            await _readable(self._raw if self._up else self.s)

    async def readinto(self, buf):
        """Bytes read into buf (at least 1); 0 at the end of the stream."""
        while True:
            k = self.s.readinto(buf)
            if k is not None:
                self._up = True
                return k
            await _readable(self._raw if self._up else self.s)

    async def readexactly(self, n):
        r = b""
        while n:
            d = await self.read(n)
            if not d:
                raise EOFError
            r += d
            n -= len(d)
        return r

    def write(self, buf):
        self._out = self._out + buf if self._out else buf

    async def drain(self):
        mv = memoryview(self._out)
        self._out = b""
        off = 0
        while off < len(mv):
            k = self.s.write(mv[off:])
            if k is None:  # the same bytes again once writable, as TLS requires
                await _writable(self.s)
            else:
                off += k

    def close(self):
        self.s.close()
