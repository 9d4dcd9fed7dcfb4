"""outbox: feed-data events waiting for their application ack.

Every event gets its message_id and its payload bytes when it happens, and
keeps both until the cloud's application ack settles it: ``accepted`` or
``replayed`` (success), ``rejected``/``conflict``/any non-retryable status
(dropped and counted), or ``error`` with ``retryable: true`` (sent again later,
same message_id, same bytes). An event whose ack is overdue is sent again too:
the cloud answers ``replayed`` if it had it. PUBACK is not delivery.

While the link is down, or an ack is overdue, the outbox spills to flash
(``spill()``: one file, written to a temporary name and renamed, at most
every few seconds, so a reboot loses at most that window) and the next boot
loads it back (``load()``): the same message_ids and bytes, in order.

When full, the oldest sensor sample goes first (or, with
``when_full="drop_newest_sample"``, the new sample is refused); a command ack
is never dropped while a sample can go. Every drop is counted.
"""
import os
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
    def __init__(self, capacity=64, ack_timeout_ms=30000, retry_ms=2000, retry_cap_ms=60000,
                 when_full="drop_oldest_sample", spill_path=None):
        self.capacity = capacity
        self.when_full = when_full
        self.spill_path = spill_path
        self.dirty = False  # changed since the last spill
        self.spills = 0  # spill files written (flash wear)
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
        """Queue an event; None when it was refused because the outbox is full."""
        if len(self.entries) >= self.capacity:
            if not is_ack and self.when_full == "drop_newest_sample":
                self.evicted += 1
                return None
            self._evict()
        e = Entry(mid, route, payload, is_ack)
        self.entries.append(e)
        self.by_mid[mid] = e
        self.dirty = True
        return e

    def _evict(self):
        # Oldest sensor sample first. Command acks are kept: the outbox may run over
        # its capacity with them, up to twice it (RAM is finite), then the oldest goes.
        for e in self.entries:
            if not e.is_ack:
                self._remove(e)
                self.evicted += 1
                return
        if len(self.entries) >= 2 * self.capacity:
            self._remove(self.entries[0])
            self.evicted += 1

    def _remove(self, e):
        self.entries.remove(e)
        self.by_mid.pop(e.mid, None)
        self.dirty = True

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

    def overdue(self, now=None):
        """True when some sent event has waited past its ack timeout."""
        now = ticks_ms() if now is None else now
        for e in self.entries:
            if e.state == _SENT and ticks_diff(now, e.due) >= 0:
                return True
        return False

    def spill(self):
        """Write the unacked events to flash (tmp + rename); remove the file when none are left."""
        path = self.spill_path
        if not path:
            return
        if not self.entries:
            try:
                os.remove(path)
            except OSError:
                pass  # there was none
            self.dirty = False
            return
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            for e in self.entries:
                f.write(e.route.encode())
                f.write(b"\t1\t" if e.is_ack else b"\t0\t")
                f.write(e.payload)
                f.write(b"\n")
        os.rename(tmp, path)
        self.dirty = False
        self.spills += 1

    def load(self):
        """Queue the events a previous run spilled; returns how many. Bad lines are skipped."""
        if not self.spill_path:
            return 0
        import json
        n = 0
        try:
            f = open(self.spill_path, "rb")
        except OSError:
            return 0
        with f:
            for line in f:
                parts = line.rstrip(b"\n").split(b"\t", 2)
                if len(parts) != 3:
                    continue  # a torn last line
                try:
                    mid = json.loads(parts[2])["message_id"]
                except (ValueError, KeyError, TypeError):
                    continue
                if mid not in self.by_mid:
                    self.add(mid, parts[0].decode(), parts[2], parts[1] == b"1")
                    n += 1
        self.dirty = False
        return n
