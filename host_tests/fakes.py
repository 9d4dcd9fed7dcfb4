"""Fakes for the fixture-free unit tests (CPython and the MicroPython unix port)."""
import asyncio
import sys

_MICROPYTHON = sys.implementation.name == "micropython"


def run(coro):
    """Run a coroutine to the end on either runtime.

    MicroPython keeps the loop's state after asyncio.run(): give the next test a fresh one.
    """
    try:
        return asyncio.run(coro)
    finally:
        if _MICROPYTHON:
            asyncio.new_event_loop()


class FakeStream:
    """A reader+writer pair over bytes: `incoming` is read, writes are recorded.

    ``writes`` lists each write() call's bytes, so a test can check that a
    packet went out in one write. When `incoming` runs out, reads wait until
    feed() adds more or close() ends the stream (EOF).
    """

    def __init__(self, incoming=b""):
        self.buf = bytearray(incoming)
        self.writes = []
        self.closed = False
        self._more = asyncio.Event()

    def feed(self, data):
        self.buf += data
        self._more.set()

    def eof(self):
        self.closed = True
        self._more.set()

    async def _wait(self, n):
        while len(self.buf) < n and not self.closed:
            self._more = asyncio.Event()
            await self._more.wait()

    async def readexactly(self, n):
        await self._wait(n)
        if len(self.buf) < n:
            raise EOFError("stream closed")
        out = bytes(self.buf[:n])
        self.buf = self.buf[n:]
        return out

    async def readinto(self, buf):
        """Like MicroPython's Stream.readinto: what is there (at least 1 byte), 0 at EOF."""
        await self._wait(1)
        n = min(len(buf), len(self.buf))
        buf[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    async def read(self, n=-1):
        await self._wait(1)
        if n < 0:
            n = len(self.buf)
        out = bytes(self.buf[:n])
        self.buf = self.buf[n:]
        return out

    async def readline(self):
        while b"\n" not in self.buf and not self.closed:
            self._more = asyncio.Event()
            await self._more.wait()
        i = self.buf.find(b"\n")
        n = len(self.buf) if i < 0 else i + 1
        out = bytes(self.buf[:n])
        self.buf = self.buf[n:]
        return out

    def write(self, data):
        self.writes.append(bytes(data))

    async def drain(self):
        pass

    def close(self):
        self.closed = True
        self._more.set()

    async def wait_closed(self):
        pass

    @property
    def written(self):
        return b"".join(self.writes)


def tmpdir():
    """A new folder under /tmp (no tempfile module on MicroPython)."""
    import binascii
    import os
    d = "/tmp/ugate_test_" + binascii.hexlify(os.urandom(6)).decode()
    os.mkdir(d)
    return d


def rmtree(d):
    import os
    for n in os.listdir(d):
        p = d + "/" + n
        try:
            os.remove(p)
        except OSError:
            rmtree(p)
    os.rmdir(d)


class FakeRelay:
    """A relay driver that records every level it was set to."""

    def __init__(self, level=False):
        self.level = level
        self.sets = []

    def set(self, v):
        self.sets.append(v)
        self.level = v

    def value(self):
        return self.level


def exists(path):
    import os
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def raises(exc, fn, *args):
    """The exception `fn(*args)` raised, which must be an `exc`; else AssertionError."""
    try:
        r = fn(*args)
    except exc as e:
        return e
    raise AssertionError("no %s for %r (got %r)" % (exc.__name__, args, r))
