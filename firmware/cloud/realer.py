"""The device side of Realer (seed 001_3fa5db594ef9e30b.txt; docs/realer-protocol.md).

Bootstrap over verified HTTPS: OAuth ``client_credentials`` token, the MQTT
catalog, a short-lived CONNECT tuple. Then the payloads: feed data, acks,
desired state.

Clock rules: lifetimes (token, credential, renew_after) run on the monotonic
clock from the moment each answer arrived. A desired message's window is
judged on server time, estimated as the HTTP ``Date`` of the latest bootstrap
answer plus monotonic time since, so a wrong device wall clock never decides.
"""
import json

from firmware.compat import const, log, ticks_add, ticks_diff, ticks_ms
from firmware.net import http

_TOKEN_MARGIN_MS = const(60000)
_TIMEOUT_MS = const(15000)
_MAX_BODY = const(16384)
ALL_SCOPES = ("iot:catalog:read", "iot:mqtt:connect", "iot:mqtt:ack:read",
              "iot:mqtt:feed-data:write", "iot:mqtt:desired:read")
_DESIRED = "iot:mqtt:desired:read"


class CloudError(Exception):
    """An HTTPS bootstrap call failed. `auth` is True for 401/403 (a circuit breaker case)."""

    def __init__(self, stage, status, error, retry_after=None):
        super().__init__("%s: HTTP %s %s" % (stage, status, error))
        self.stage = stage
        self.status = status
        self.error = error
        self.retry_after = retry_after
        self.auth = status in (401, 403)


class Credential:
    def __init__(self, d, now):
        self.client_id = _str(d, "mqtt_client_id")
        self.username = _str(d, "mqtt_username")
        self.password = _str(d, "mqtt_credential")
        self.scopes = d.get("scopes") or []
        exp = _int(d, "expires_in")
        self.expires_in = exp
        self.renew_after = min(_int(d, "renew_after", exp * 3 // 4), exp)
        self.t0 = now

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
        commands = [r for r in cfg.routes.values() if r.get("driver") == "virtual_relay"]
        self.scopes = cfg.scopes or [s for s in ALL_SCOPES if s != _DESIRED or commands]
        self.basic = cfg.client_auth == "basic"
        self.token = None
        self._token_until = 0
        self.catalog = None
        self.cred = None
        self._server = None  # (server epoch seconds, ticks_ms) from the latest Date header

    # --- HTTPS ------------------------------------------------------------
    async def _call(self, stage, method, path, headers, body, ok):
        url = self.api + path
        r = await http.request(method, url, self.ctx, headers, body, _TIMEOUT_MS, _MAX_BODY)
        date = r.header("date")
        if date:
            t = http_date(date)
            if t:
                # Date has whole seconds: the server's clock is somewhere in [t, t + 1).
                self._server = (t * 1000 + 500, ticks_ms())
        if r.status != ok:
            err = "error"
            try:
                err = r.json().get("error", err)
            except (ValueError, AttributeError):
                pass
            ra = r.header("retry-after")
            raise CloudError(stage, r.status, err, int(ra) if ra and ra.isdigit() else None)
        try:
            data = r.json() if r.body else {}
        except ValueError:
            raise CloudError(stage, r.status, "answer is not JSON") from None
        if not isinstance(data, dict):
            raise CloudError(stage, r.status, "answer is not a JSON object")
        return data

    async def ensure_token(self):
        now = ticks_ms()
        if self.token and ticks_diff(self._token_until, now) > 0:
            return False
        form = {"grant_type": "client_credentials", "scope": " ".join(self.scopes)}
        d = await self._call("token", "POST", "/oauth/token", self._client_auth(form),
                             http.form_encode(form), 200)
        tok = d.get("access_token")
        if not isinstance(tok, str) or not tok:
            raise CloudError("token", 200, "no access_token")
        life = d.get("expires_in", 3600)
        life_ms = int(life) * 1000 if isinstance(life, int) and life > 0 else 3600000
        self.token = tok
        # Renew a minute early, or at 90 % of a short life.
        self._token_until = ticks_add(now, max(life_ms - _TOKEN_MARGIN_MS, life_ms * 9 // 10))
        log("bootstrap", "token ok (expires in %ds; scopes: %s)" % (life_ms // 1000, d.get("scope", "")))
        return True

    def _client_auth(self, form):
        """Headers for a form POST with client authentication: Basic, or fields in `form`."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        cfg = self.cfg
        if self.basic:
            headers["Authorization"] = http.basic_auth(cfg.client_id, cfg.client_secret)
        else:
            form["client_id"] = cfg.client_id
            form["client_secret"] = cfg.client_secret
        return headers

    def _bearer(self):
        return {"Authorization": "Bearer " + self.token}

    async def fetch_catalog(self):
        path = "/iot/v1/devices/%d/mqtt" % self.cfg.device_id
        d = await self._call("catalog", "GET", path, self._bearer(), None, 200)
        self.catalog = Catalog(d)
        c = self.catalog
        log("bootstrap", "catalog ok: broker %s:%d, %d routes, ack topic %s" % (
            c.host, c.port, len(c.routes), c.ack_topic))
        return c

    async def fetch_credential(self):
        c = self.catalog
        body = dict(c.cred_body)
        if "scopes" in body and isinstance(body["scopes"], list):
            body["scopes"] = [s for s in body["scopes"] if s in self.scopes]
        headers = self._bearer()
        headers["Content-Type"] = "application/json"
        d = await self._call("credential", c.cred_method, c.cred_path, headers, json.dumps(body), 201)
        m = d.get("mqtt")
        try:
            self.cred = Credential(m if isinstance(m, dict) else {}, ticks_ms())
        except ValueError as e:
            raise CloudError("credential", 201, str(e)) from None
        log("bootstrap", "credential %s (renew in %ds, expires in %ds)" % (
            self.cred.username, self.cred.renew_after, self.cred.expires_in))
        return self.cred

    async def revoke(self):
        if not self.token:
            return
        form = {"token": self.token, "token_type_hint": "access_token"}
        await self._call("revoke", "POST", "/oauth/revoke", self._client_auth(form),
                         http.form_encode(form), 200)
        self.token = None
        self.cred = None
        log("shutdown", "token revoked")

    def forget_auth(self):
        """After 401/403 or a refused CONNECT: start over from the token."""
        self.token = None
        self.cred = None

    def server_now_ms(self):
        """Server time in ms since 1970, or None before the first Date header.

        Integers only: the ESP32's single-precision floats cannot hold an epoch second.
        """
        if self._server is None:
            return None
        t, at = self._server
        return t + ticks_diff(ticks_ms(), at)

    # --- payloads ---------------------------------------------------------
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


def parse_ack(payload):
    """(message_id, status, retryable, error_type) or raise ValueError."""
    d = json.loads(payload)
    if not isinstance(d, dict):
        raise ValueError("ack is not an object")
    mid, status = d.get("message_id"), d.get("status")
    if not isinstance(status, str):
        raise ValueError("ack has no status")
    err = d.get("error")
    etype = err.get("type") if isinstance(err, dict) else None
    return mid, status, d.get("retryable") is True, etype


def parse_desired(payload):
    """A desired-state message as a dict, or raise ValueError naming the problem."""
    try:
        d = json.loads(payload)
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


class Catalog:
    def __init__(self, d):
        m = d.get("mqtt")
        if not isinstance(m, dict):
            raise CloudError("catalog", 200, "no mqtt object")
        url = m.get("broker_url")
        if not isinstance(url, str) or not url.startswith("mqtts://"):
            # Seed 001: plain MQTT is not accepted. Never fall back to it.
            raise CloudError("catalog", 200, "broker_url %r is not mqtts://" % (url,))
        hostport = url[8:].split("/")[0]
        host, _, port = hostport.rpartition(":")
        if not host:
            host, port = hostport, "8883"
        if not port.isdigit():
            raise CloudError("catalog", 200, "bad broker port in %r" % url)
        self.host, self.port = host, int(port)
        self.client_id = m.get("client_id")
        self.ack_topic = m.get("feed_data_ack_topic")
        if not isinstance(self.ack_topic, str):
            raise CloudError("catalog", 200, "no feed_data_ack_topic")
        ce = m.get("credential_endpoint", {})
        if not isinstance(ce, dict):
            raise CloudError("catalog", 200, "credential_endpoint is not an object")
        self.cred_path = ce.get("endpoint") or "/iot/v1/mqtt-credentials"
        self.cred_method = ce.get("http_method") or "POST"
        self.cred_body = ce.get("body") if isinstance(ce.get("body"), dict) else {}
        self.routes = {}
        routes = d.get("mqtt_routes") or []
        if not isinstance(routes, list):
            raise CloudError("catalog", 200, "mqtt_routes is not a list")
        for r in routes:
            rm = r.get("mqtt") if isinstance(r, dict) else None
            rid = r.get("route_id") if isinstance(r, dict) else None
            if not isinstance(rm, dict) or not isinstance(rid, str):
                continue
            self.routes[rid] = {"feed": rm.get("feed_data_topic"), "desired": rm.get("desired_topic"),
                                "type": r.get("value_type"), "min": r.get("min"), "max": r.get("max"),
                                "name": r.get("name")}
        lim = d.get("limits") if isinstance(d.get("limits"), dict) else {}
        self.max_payload = _limit(lim, "max_payload_bytes", 2048)
        self.max_inflight = _limit(lim, "max_inflight_messages", 8)
        self.keepalive = _limit(lim, "keepalive_seconds", 0)


def _limit(lim, key, default):
    v = lim.get(key)
    return v if type(v) is int and v > 0 else default


def _str(d, k):
    v = d.get(k)
    if not isinstance(v, str) or not v:
        raise ValueError("no %s" % k)
    return v


def _int(d, k, default=None):
    v = d.get(k, default)
    if type(v) is not int or v <= 0:
        raise ValueError("bad %s" % k)
    return v


# --- time parsing ---------------------------------------------------------
_MONTHS = "JanFebMarAprMayJunJulAugSepOctNovDec"


def _days(y, m, d):
    """Days from 1970-01-01 to the given civil date (proleptic Gregorian)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def http_date(s):
    """Seconds since 1970 from an IMF-fixdate ('Sat, 21 Nov 2026 21:08:36 GMT'), or None."""
    p = s.split()
    if len(p) != 6 or p[5] != "GMT":
        return None
    m = _MONTHS.find(p[2])
    hms = p[4].split(":")
    if m < 0 or m % 3 or len(hms) != 3 or not p[1].isdigit() or not p[3].isdigit():
        return None
    try:
        h, mi, sec = int(hms[0]), int(hms[1]), int(hms[2])
    except ValueError:
        return None
    return _days(int(p[3]), m // 3 + 1, int(p[1])) * 86400 + h * 3600 + mi * 60 + sec


def rfc3339_ms(s):
    """Milliseconds since 1970 (an int) from '2026-11-21T21:02:46.123Z' or an offset, or None."""
    if len(s) < 20 or s[4] != "-" or s[7] != "-" or s[10] not in "Tt" or s[13] != ":" or s[16] != ":":
        return None
    try:
        y, mo, d = int(s[0:4]), int(s[5:7]), int(s[8:10])
        h, mi, sec = int(s[11:13]), int(s[14:16]), int(s[17:19])
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and sec < 61):
            return None
        t = ((_days(y, mo, d) * 24 + h) * 60 + mi) * 60 + sec
        ms = 0
        rest = s[19:]
        if rest.startswith("."):
            i = 1
            while i < len(rest) and rest[i].isdigit():
                i += 1
            if i == 1:
                return None
            ms = int((rest[1:i] + "00")[:3])
            rest = rest[i:]
        if rest in ("Z", "z"):
            off = 0
        elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
            off = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
            if rest[0] == "-":
                off = -off
        else:
            return None
        return (t - off) * 1000 + ms
    except ValueError:
        return None
