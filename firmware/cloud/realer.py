"""The device side of Realer (seed 001_3fa5db594ef9e30b.txt; docs/realer-protocol.md).

Two modules, for RAM: this one stays loaded (state, payloads, time checks);
``realer_boot`` does the HTTPS bootstrap (token, catalog, credential, revoke)
and is loaded with the HTTPS client only while it runs, then unloaded (done()).

Clock rules: lifetimes (token, credential, renew_after) run on the monotonic
clock from the moment each answer arrived. A desired message's ``expires_at`` is
judged on a lower bound of server time: the HTTP ``Date`` of the latest bootstrap
answer (whole seconds) plus monotonic time since, raised to the publish time of a
later desired message (``expires_at - valid_for_seconds``, in ms) when one comes.
A message is stale only when that bound is past its ``expires_at``: a wrong device
wall clock never decides, and a fresh command is never called stale by a coarse clock.
"""
import json

from firmware.compat import const, ticks_diff, ticks_ms, unload

ALL_SCOPES = ("iot:catalog:read", "iot:mqtt:connect", "iot:mqtt:ack:read",
              "iot:mqtt:feed-data:write", "iot:mqtt:desired:read")
_DESIRED = "iot:mqtt:desired:read"
# How far a desired message's publish time may be ahead of the Date bound: the Date's
# own second, transit, and slack. A later one is not believed (a cloud-side bug).
_AHEAD_MS = const(3000)


class CloudError(Exception):
    """An HTTPS bootstrap call failed. `auth` is True for 401/403 (a circuit breaker case)."""

    def __init__(self, stage, status, error, retry_after=None):
        super().__init__("%s: HTTP %s %s" % (stage, status, error))
        self.stage = stage
        self.status = status
        self.error = error
        self.retry_after = retry_after
        self.auth = status in (401, 403)


class Catalog:
    """What the catalog said: host, port, client_id, ack_topic, cred_path/method/body,
    routes {route_id: {feed, desired, type, min, max, name}}, max_payload, max_inflight,
    keepalive. Filled by realer_boot.parse_catalog()."""


class Credential:
    """A CONNECT tuple: client_id, username, password, scopes, expires_in, renew_after (s),
    t0 (ticks_ms when it arrived). Filled by realer_boot.credential()."""

    def renew_due(self, now):
        return ticks_diff(now, self.t0) >= self.renew_after * 1000

    def usable(self, now):
        # A tuple a few seconds from its end is not worth a TLS handshake.
        return ticks_diff(now, self.t0) < (self.expires_in - 5) * 1000


class Realer:
    def __init__(self, cfg, ctx):
        self.cfg = cfg
        self.ctx = ctx
        self.api = cfg.api_url.rstrip("/")
        commands = [r for r in cfg.routes.values()
                    if r.get("driver") in ("virtual_relay", "relay", "pwm")]
        self.scopes = cfg.scopes or [s for s in ALL_SCOPES if s != _DESIRED or commands]
        self.basic = cfg.client_auth == "basic"
        self.token = None
        self.token_until = 0
        self.catalog = None
        self.cred = None
        # Lower bounds on server time, as (ms since 1970, ticks_ms): the latest Date header,
        # and the publish time of a desired message since then (None before one).
        self.server = None
        self.floor = None

    # --- bootstrap: realer_boot does the work, loaded only for it -------------
    async def ensure_token(self):
        from firmware.cloud import realer_boot
        return await realer_boot.ensure_token(self)

    async def fetch_catalog(self):
        from firmware.cloud import realer_boot
        return await realer_boot.fetch_catalog(self)

    async def fetch_credential(self):
        from firmware.cloud import realer_boot
        return await realer_boot.fetch_credential(self)

    async def revoke(self):
        from firmware.cloud import realer_boot
        return await realer_boot.revoke(self)

    @staticmethod
    def done():
        """Bootstrap is over until the next renewal: give its code's RAM back."""
        unload("firmware.cloud.realer_boot")
        unload("firmware.net.http")

    def forget_auth(self):
        """After 401/403 or a refused CONNECT: start over from the token."""
        self.token = None
        self.cred = None

    def server_now_ms(self):
        """A lower bound on server time in ms since 1970, or None before the first Date.

        Integers only: the ESP32's single-precision floats cannot hold an epoch second.
        """
        b = self.floor or self.server  # a floor is only kept above the Date bound
        if b is None:
            return None
        t, at = b
        return t + ticks_diff(ticks_ms(), at)

    def published(self, ms, at):
        """A desired message published at server time `ms` arrived at `at` (ticks_ms)."""
        if self.server is None:
            return
        t, a = self.server
        if ms > t + ticks_diff(at, a) + _AHEAD_MS:
            return
        t, a = self.floor or self.server
        if ms > t + ticks_diff(at, a):
            self.floor = (ms, at)

    def subscriptions(self, command_routes):
        """(topic, qos) pairs: the ack topic, and desired topics only with the scope."""
        c = self.catalog
        subs = [(c.ack_topic, 1)]
        if self.cred and _DESIRED in self.cred.scopes:
            for rid in command_routes:
                r = c.routes.get(rid)
                if r and r.get("desired"):
                    subs.append((r["desired"], 1))
        return subs


def feed_payload(message_id, value, at, desired_id=None, report_status=None):
    """Feed data as compact JSON bytes (docs/realer-protocol.md, feed data)."""
    d = {"message_id": message_id, "value": value, "value_received_at": at}
    if desired_id is not None:
        d["desired_id"] = desired_id
        if report_status and report_status != "applied":
            d["report_status"] = report_status
    return json.dumps(d).encode()


def _loads(payload):
    # MicroPython parses the MQTT client's memoryview in place; CPython (unit tests) wants bytes.
    try:
        return json.loads(payload)
    except TypeError:
        return json.loads(bytes(payload))


def parse_ack(payload):
    """(message_id, status, retryable, error_type) or raise ValueError."""
    d = _loads(payload)
    if not isinstance(d, dict):
        raise ValueError("ack is not an object")
    mid, status = d.get("message_id"), d.get("status")
    if not isinstance(status, str):
        raise ValueError("ack has no status")
    err = d.get("error")
    etype = err.get("type") if isinstance(err, dict) else None
    return mid, status, d.get("retryable") is True, etype


_MAX_BRACKETS = 16  # a real desired message has one: the object itself


def _brackets(payload):
    """How many [ and { (inside strings too): a cheap bound taken before parsing."""
    if isinstance(payload, str):
        return payload.count("[") + payload.count("{")
    if isinstance(payload, (bytes, bytearray)):
        return payload.count(b"[") + payload.count(b"{")
    n = 0
    for b in payload:  # a memoryview: no count(), and a copy is what it avoids
        if b == 91 or b == 123:
            n += 1
    return n


def parse_desired(payload):
    """A desired-state message as a dict, or raise ValueError naming the problem."""
    # One 4 KB packet holds ~2000 nested arrays: json.loads then needs ~75 bytes of
    # heap per level (a MemoryError on a 64 KB heap) and printing the value recurses
    # past the stack (RuntimeError). Neither is a ValueError; refuse before parsing.
    if _brackets(payload) > _MAX_BRACKETS:
        raise ValueError("nested too deep (more than %d brackets)" % _MAX_BRACKETS)
    try:
        d = _loads(payload)
    except (ValueError, UnicodeError):
        raise ValueError("not JSON") from None
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    if type(d.get("version")) is not int or d["version"] != 1:
        raise ValueError("unsupported version %r" % (d.get("version"),))
    did = d.get("desired_id")
    if not isinstance(did, str) or not 0 < len(did) <= 64:
        raise ValueError("bad desired_id")
    if "value" not in d:
        raise ValueError("no value")
    seq = d.get("sequence_number")
    if type(seq) is not int or seq < 0 or seq > 0x7FFFFFFFFFFF:
        raise ValueError("bad sequence_number")
    vf = d.get("valid_for_seconds")
    if type(vf) is not int or not 0 < vf <= 86400:
        raise ValueError("bad valid_for_seconds")
    exp = d.get("expires_at")
    d["expires_ms"] = rfc3339_ms(exp) if isinstance(exp, str) else None
    return d


# --- time parsing ---------------------------------------------------------
def _days(y, m, d):
    """Days from 1970-01-01 to the given civil date (proleptic Gregorian)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def rfc3339_ms(s):
    """Milliseconds since 1970 (an int) from '2026-11-21T21:02:46.123Z' or an offset, or None."""
    # Bytes and slices only: on MicroPython, s[i] and `for c in s` intern every character
    # they return as a qstr, and a new qstr pool is a permanent 7 KB of heap.
    try:
        b = s.encode()
        if len(b) < 20 or b[4:5] != b"-" or b[7:8] != b"-" or b[10] | 0x20 != 0x74 or b[13:14] != b":" \
                or b[16:17] != b":":
            return None
        y, mo, d = int(b[0:4]), int(b[5:7]), int(b[8:10])
        h, mi, sec = int(b[11:13]), int(b[14:16]), int(b[17:19])
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and sec < 61):
            return None
        t = ((_days(y, mo, d) * 24 + h) * 60 + mi) * 60 + sec
        ms = 0
        rest = b[19:]
        if rest[:1] == b".":
            i = 1
            while i < len(rest) and 0x30 <= rest[i] <= 0x39:
                i += 1
            if i == 1:
                return None
            ms = int((rest[1:i] + b"00")[:3])
            rest = rest[i:]
        if rest == b"Z" or rest == b"z":
            off = 0
        elif len(rest) == 6 and rest[:1] in (b"+", b"-") and rest[3:4] == b":":
            off = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
            if rest[:1] == b"-":
                off = -off
        else:
            return None
        return (t - off) * 1000 + ms
    except (ValueError, UnicodeError):
        return None
