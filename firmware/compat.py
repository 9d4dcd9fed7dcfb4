"""The few things that differ between MicroPython and CPython (unit tests).

Firmware code imports time helpers, const and the log from here, so the same
modules run on the ESP32, on the unix port, and under pytest.
"""
import sys
import time

MICROPYTHON = sys.implementation.name == "micropython"

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):  # type: ignore[misc]  # CPython fallback for micropython.const
        return x

if hasattr(time, "ticks_ms"):
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
else:  # CPython: monotonic milliseconds; no wrap-around to handle
    def ticks_ms():
        return int(time.monotonic() * 1000)  # type: ignore[attr-defined]  # CPython-only

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b


def utc_iso(t=None):
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-21T21:02:46.123Z (docs/realer-protocol.md)."""
    if t is None:
        if hasattr(time, "time_ns"):
            ns = time.time_ns()
            t, ms = ns // 1000000000, (ns // 1000000) % 1000
        else:
            t, ms = int(time.time()), 0
    else:
        ms = int((t - int(t)) * 1000)
        t = int(t)
    y, mo, d, h, mi, s = time.gmtime(t)[:6]
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (y, mo, d, h, mi, s, ms)


async def wait_for_ms(aw, ms):
    """asyncio.wait_for with a timeout in milliseconds, on both runtimes."""
    import asyncio
    if hasattr(asyncio, "wait_for_ms"):
        return await asyncio.wait_for_ms(aw, ms)
    return await asyncio.wait_for(aw, ms / 1000)


def heap():
    """(free, used) bytes of the GC heap; (-1, -1) under CPython, which does not say."""
    import gc
    if hasattr(gc, "mem_free"):
        return gc.mem_free(), gc.mem_alloc()
    return -1, -1


def unload(name):
    """Forget a module so the GC can take its code back (RAM is the budget).

    For code needed once (config checks) or rarely (the HTTPS client between
    renewals); the next import loads it again.
    """
    mod = sys.modules.pop(name, None)
    if mod is not None and "." in name:
        parent, _, attr = name.rpartition(".")
        pkg = sys.modules.get(parent)
        if pkg is not None and getattr(pkg, attr, None) is mod:
            delattr(pkg, attr)


_quiet = False


def log(tag, msg):
    """One line per event: `  12.345 tag: msg` (seconds since boot)."""
    if not _quiet:
        t = ticks_diff(ticks_ms(), _T0)
        print("%4d.%03d %s: %s" % (t // 1000, t % 1000, tag, msg))


_T0 = ticks_ms()
