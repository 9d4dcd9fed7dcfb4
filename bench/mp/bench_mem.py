"""Bench wrapper main for the heap probes (MicroPython): firmware.app.main() plus one task.

The task samples gc.mem_alloc() every 10 ms (its peak, no forced collection) and, every
5 s, the live heap right after gc.collect(); it prints both as `bench: {json}`. Nothing
else is added, so the smallest heap that runs is the firmware's, plus this small task.
"""
import asyncio
import gc

import firmware.app as _app

_run = asyncio.run
_first = [True]


async def _mem():
    peak = live = n = 0
    while True:
        a = gc.mem_alloc()
        if a > peak:
            peak = a
        n += 1
        if n % 500 == 0:
            gc.collect()
            a = gc.mem_alloc()
            if a > live:
                live = a
            print('bench: {"peak": %d, "live": %d, "live_now": %d, "free": %d}' % (
                peak, live, a, gc.mem_free()))
        await asyncio.sleep_ms(10)


def _patched(coro):
    if not _first[0]:  # the shutdown's asyncio.run: as it is
        return _run(coro)
    _first[0] = False

    async def both():
        t = asyncio.create_task(_mem())
        try:
            return await coro
        finally:
            t.cancel()
    return _run(both())


asyncio.run = _patched
_app.main()
