"""The loop-lag ticker (MicroPython): how late `await asyncio.sleep_ms(1)` wakes up.

Lateness = measured sleep - 1 ms, in a histogram of 50 us bins (p50/p99 to 50 us; max exact).
MicroPython's asyncio keeps time in whole milliseconds, so even an idle loop wakes up to
about 1 ms late: bench_idle.py measures that floor in the same run.
"""
import asyncio
import time
from array import array

_BIN_US = 50
_BINS = 4000  # 50 us bins up to 200 ms; later wake-ups go to the last bin (max stays exact)


class Lag:
    def __init__(self):
        self.bins = array("I", bytes(4 * (_BINS + 1)))
        self.n = self.max = 0

    def add(self, us):
        if us < 0:
            us = 0
        self.n += 1
        if us > self.max:
            self.max = us
        b = us // _BIN_US
        self.bins[b if b < _BINS else _BINS] += 1

    def pct(self, p):
        if not self.n:
            return None
        want = (self.n * p + 99) // 100
        seen = 0
        for i in range(_BINS + 1):
            seen += self.bins[i]
            if seen >= want:
                return min((i + 1) * _BIN_US, self.max)
        return self.max

    def stats(self):
        return {"n": self.n, "p50_us": self.pct(50), "p99_us": self.pct(99), "max_us": self.max}


lag = [Lag()]


async def ticker():
    tu, td = time.ticks_us, time.ticks_diff
    while True:
        t = tu()
        await asyncio.sleep_ms(1)
        lag[0].add(td(tu(), t) - 1000)


