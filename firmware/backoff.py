"""Exponential backoff with full jitter: sleep a random time in [0, min(cap, base * 2^n)].

Full jitter spreads a fleet's retries after an outage instead of letting every
gateway hit the cloud in the same second. Retry-After, when given, is honoured
but clamped so a hostile or broken server cannot park the device for a day.
"""
import random


class Backoff:
    def __init__(self, base_ms=1000, cap_ms=60000, retry_after_cap_s=300):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.retry_after_cap_s = retry_after_cap_s
        self.n = 0

    def reset(self):
        self.n = 0

    def next_ms(self, retry_after=None):
        top = min(self.cap_ms, self.base_ms << min(self.n, 16))
        self.n += 1
        delay = random.getrandbits(20) * top // 0x100000
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.retry_after_cap_s) * 1000)
        return delay
