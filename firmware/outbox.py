"""outbox: feed-data events waiting for their application ack.

Every event gets its message_id and its payload bytes when it happens, and
keeps both until the cloud's application ack settles it: ``accepted`` or
``replayed`` (success), ``rejected``/``conflict``/any non-retryable status
(dropped and counted), or ``error`` with ``retryable: true`` (sent again later,
same message_id, same bytes). An event whose ack is overdue is sent again too:
the cloud answers ``replayed`` if it had it. PUBACK is not delivery.

RAM only for now; spilling to flash while offline comes with issue 5.
"""
from firmware.compat import const, ticks_add, ticks_diff, ticks_ms

_NEW = const(0)
_SENT = const(1)
_WAIT = const(2)  # retryable error: waiting for its retry time


class Entry:
    __slots__ = ("mid", "route", "payload", "state", "tries", "due", "is_ack")

    def __init__(self, mid, route, payload, is_ack):
        self.mid = mid
        self.route = route
        self.payload = payload
        self.state = _NEW
        self.tries = 0
        self.due = 0
        self.is_ack = is_ack


class Outbox:
    def __init__(self, capacity=64, ack_timeout_ms=30000, retry_ms=2000, retry_cap_ms=60000):
        self.capacity = capacity
        self.ack_timeout_ms = ack_timeout_ms
        self.retry_ms = retry_ms
        self.retry_cap_ms = retry_cap_ms
        self.entries = []  # oldest first
        self.by_mid = {}
        self.delivered = 0
        self.dropped = 0  # rejected by the cloud
        self.evicted = 0  # pushed out when full
        self.last_status = {}

    def __len__(self):
        return len(self.entries)

    def add(self, mid, route, payload, is_ack=False):
        if len(self.entries) >= self.capacity:
            self._evict()
        e = Entry(mid, route, payload, is_ack)
        self.entries.append(e)
        self.by_mid[mid] = e
        return e

    def _evict(self):
        # Oldest sensor sample first; a command ack only when nothing else is left.
        for e in self.entries:
            if not e.is_ack:
                break
        else:
            e = self.entries[0]
        self._remove(e)
        self.evicted += 1

    def _remove(self, e):
        self.entries.remove(e)
        self.by_mid.pop(e.mid, None)

    def ready(self, now=None):
        """Entries to publish now, oldest first."""
        now = ticks_ms() if now is None else now
        out = []
        for e in self.entries:
            if e.state == _NEW or ticks_diff(now, e.due) >= 0:
                out.append(e)
        return out

    def next_due_ms(self, now=None):
        """Milliseconds until the next entry needs sending (0 = now), or None."""
        now = ticks_ms() if now is None else now
        best = None
        for e in self.entries:
            d = 0 if e.state == _NEW else max(0, ticks_diff(e.due, now))
            if best is None or d < best:
                best = d
        return best

    def sent(self, e, now=None):
        now = ticks_ms() if now is None else now
        e.state = _SENT
        e.tries += 1
        e.due = ticks_add(now, self.ack_timeout_ms)

    def requeue(self, skip=()):
        """After a reconnect, unacked events go out again (same message_id), except
        those whose payload object is in `skip` (the MQTT client resends them)."""
        for e in self.entries:
            if e.state == _SENT and id(e.payload) not in skip:
                e.state = _NEW

    def ack(self, mid, status, retryable, now=None):
        """Settle an event from its application ack. Returns the entry, or None if unknown."""
        e = self.by_mid.get(mid)
        if e is None:
            return None
        self.last_status[e.route] = status
        if status in ("accepted", "replayed"):
            self._remove(e)
            self.delivered += 1
        elif retryable:
            now = ticks_ms() if now is None else now
            e.state = _WAIT
            e.due = ticks_add(now, min(self.retry_cap_ms, self.retry_ms << min(e.tries, 10)))
        else:
            self._remove(e)
            self.dropped += 1
        return e
