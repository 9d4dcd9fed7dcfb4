"""Bench wrapper main (MicroPython): firmware.app.main() plus measurement tasks.

- a 1 ms ticker: how late each `await asyncio.sleep_ms(1)` wakes up (loop lag);
- a phase watcher: the host writes a phase name to `bench.phase`; on each change this
  prints the finished phase's counters as `bench: {json}` (duration, store writes,
  deliveries, evictions, loop lag p50/p99/max);
- phases `burst:N` and `offline:N` enqueue N readings through Gateway.report() (the
  sampler's own path) as fast as the outbox takes them, and print when all are settled
  (`burst`) or enqueued (`offline`: the link is down, nothing can settle).
The gateway is reached through firmware.app.GATEWAY; asyncio.run is wrapped so the tasks
run inside the firmware's own loop.
"""
import asyncio
import gc
import json
import time

import firmware.app as _app
from bench_lag import Lag, lag, ticker as _ticker

_run = asyncio.run
_first = [True]
_NUMBERS = ("temperature", "humidity", "voltage")  # 10..29.9 fits all three ranges


def _spills(ob):
    """outbox.dat writes (Outbox.spills), or -1 in a firmware without the spill."""
    return getattr(ob, "spills", -1)


def _emit(d):
    print("bench: " + json.dumps(d))


async def _burst(gw, n, offline):
    routes = [r for r in gw.routes.values() if r.kind == "sensor" and r.name in _NUMBERS]
    ob, st = gw.outbox, gw.store
    w0, e0, x0, s0 = st.writes, ob.evicted, ob.dropped, _spills(ob)
    cap = ob.capacity - 4
    pending = []
    t0 = time.ticks_ms()
    i = 0
    while i < n:
        if offline or len(ob) < cap:
            mid = gw.report(routes[i % len(routes)], 10 + (i % 200) / 10)
            if mid is not None and not offline:
                pending.append(mid)
            i += 1
            if i % 8 == 0:
                await asyncio.sleep_ms(0)
        else:
            await asyncio.sleep_ms(1)
        while pending and pending[0] not in ob.by_mid:
            pending.pop(0)
    t1 = time.ticks_ms()
    while pending:
        while pending and pending[0] not in ob.by_mid:
            pending.pop(0)
        await asyncio.sleep_ms(1)
    _emit({"burst": "offline" if offline else "online", "n": n,
           "enqueue_ms": time.ticks_diff(t1, t0), "settled_ms": time.ticks_diff(time.ticks_ms(), t0),
           "writes": st.writes - w0, "spills": _spills(ob) - s0, "evicted": ob.evicted - e0, "dropped": ob.dropped - x0,
           "outbox": len(ob)})


async def _phases(gw):
    cur = "boot"
    t0 = time.ticks_ms()
    w0, d0, e0, s0 = gw.store.writes, gw.outbox.delivered, gw.outbox.evicted, _spills(gw.outbox)
    while True:
        await asyncio.sleep_ms(100)
        try:
            with open("bench.phase") as f:
                p = f.read()
        except OSError:
            continue
        if p == cur or not p:
            continue
        now = time.ticks_ms()
        _emit({"phase": cur, "ms": time.ticks_diff(now, t0), "writes": gw.store.writes - w0,
               "spills": _spills(gw.outbox) - s0,
               "delivered": gw.outbox.delivered - d0, "evicted": gw.outbox.evicted - e0,
               "sessions": gw.sessions, "heap_used": gc.mem_alloc(), "lag": lag[0].stats()})
        lag[0] = Lag()
        cur, t0 = p, now
        w0, d0, e0, s0 = gw.store.writes, gw.outbox.delivered, gw.outbox.evicted, _spills(gw.outbox)
        if p.startswith("burst:") or p.startswith("offline:"):
            asyncio.create_task(_burst(gw, int(p.split(":")[1]), p.startswith("offline")))


def _patched(coro):
    if not _first[0]:  # the shutdown's asyncio.run: as it is
        return _run(coro)
    _first[0] = False

    async def both():
        tasks = [asyncio.create_task(_ticker()), asyncio.create_task(_phases(_app.GATEWAY))]
        try:
            return await coro
        finally:
            for t in tasks:
                t.cancel()
    return _run(both())


asyncio.run = _patched
_app.main()
