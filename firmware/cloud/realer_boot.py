"""Realer bootstrap over verified HTTPS: token, catalog, credential, revoke.

Loaded only while bootstrapping or renewing, together with the HTTPS client,
and unloaded after (realer.Realer.done()): on the device, RAM is the budget.
The functions take the resident realer.Realer as `r` and update its state.
"""
import gc
import json

from firmware.cloud.realer import Catalog, CloudError, Credential, _days
from firmware.compat import const, log, ticks_add, ticks_diff, ticks_ms
from firmware.net import http

_TOKEN_MARGIN_MS = const(60000)
_TIMEOUT_MS = const(15000)
_MAX_BODY = const(16384)


async def _call(r, stage, method, path, headers, body, ok):
    gc.collect()  # the answer wants a contiguous block: start from a tidy heap
    url = r.api + path
    resp = await http.request(method, url, r.ctx, headers, body, _TIMEOUT_MS, _MAX_BODY)
    date = resp.header("date")
    if date:
        t = http_date(date)
        if t:
            # Date has whole seconds: the server's clock was at least t when it answered.
            # A new anchor forgets the message-based bound (a bad one lasts until here).
            r.server = (t * 1000, ticks_ms())
            r.floor = None
    if resp.status != ok:
        err = None
        try:
            err = resp.json().get("error")
        except (ValueError, AttributeError):
            pass
        if not isinstance(err, str) or not err:
            err = "(expected %d; the answer names no error)" % ok
        ra = resp.header("retry-after")
        raise CloudError(stage, resp.status, err, int(ra) if ra and ra.isdigit() else None)
    try:
        data = resp.json() if resp.body else {}
    except ValueError:
        raise CloudError(stage, resp.status, "answer is not JSON") from None
    if not isinstance(data, dict):
        raise CloudError(stage, resp.status, "answer is not a JSON object")
    return data


async def ensure_token(r):
    now = ticks_ms()
    if r.token and ticks_diff(r.token_until, now) > 0:
        return False
    form = {"grant_type": "client_credentials", "scope": " ".join(r.scopes)}
    d = await _call(r, "token", "POST", "/oauth/token", _client_auth(r, form),
                    http.form_encode(form), 200)
    tok = d.get("access_token")
    if not isinstance(tok, str) or not tok:
        raise CloudError("token", 200, "no access_token")
    life = d.get("expires_in", 3600)
    life_ms = int(life) * 1000 if isinstance(life, int) and life > 0 else 3600000
    r.token = tok
    # Renew a minute early, or at 90 % of a short life.
    r.token_until = ticks_add(now, max(life_ms - _TOKEN_MARGIN_MS, life_ms * 9 // 10))
    log("bootstrap", "token ok (expires in %ds; scopes: %s)" % (life_ms // 1000, d.get("scope", "")))
    return True


def _client_auth(r, form):
    """Headers for a form POST with client authentication: Basic, or fields in `form`."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    cfg = r.cfg
    if r.basic:
        headers["Authorization"] = http.basic_auth(cfg.client_id, cfg.client_secret)
    else:
        form["client_id"] = cfg.client_id
        form["client_secret"] = cfg.client_secret
    return headers


def _bearer(r):
    return {"Authorization": "Bearer " + r.token}


async def fetch_catalog(r):
    path = "/iot/v1/devices/%d/mqtt" % r.cfg.device_id
    d = await _call(r, "catalog", "GET", path, _bearer(r), None, 200)
    r.catalog = parse_catalog(d)
    c = r.catalog
    log("bootstrap", "catalog ok: broker %s:%d, %d routes, ack topic %s" % (
        c.host, c.port, len(c.routes), c.ack_topic))
    return c


async def fetch_credential(r):
    c = r.catalog
    body = dict(c.cred_body)
    if "scopes" in body and isinstance(body["scopes"], list):
        body["scopes"] = [s for s in body["scopes"] if s in r.scopes]
    headers = _bearer(r)
    headers["Content-Type"] = "application/json"
    d = await _call(r, "credential", c.cred_method, c.cred_path, headers, json.dumps(body), 201)
    m = d.get("mqtt")
    try:
        r.cred = credential(m if isinstance(m, dict) else {}, ticks_ms())
    except ValueError as e:
        raise CloudError("credential", 201, str(e)) from None
    log("bootstrap", "credential %s (renew in %ds, expires in %ds)" % (
        r.cred.username, r.cred.renew_after, r.cred.expires_in))
    return r.cred


async def revoke(r):
    if not r.token:
        return
    form = {"token": r.token, "token_type_hint": "access_token"}
    await _call(r, "revoke", "POST", "/oauth/revoke", _client_auth(r, form),
                http.form_encode(form), 200)
    r.token = None
    r.cred = None
    log("shutdown", "token revoked")


def credential(d, now):
    """A realer.Credential from the credential answer's `mqtt` object; ValueError if bad."""
    c = Credential()
    c.client_id = _str(d, "mqtt_client_id")
    c.username = _str(d, "mqtt_username")
    c.password = _str(d, "mqtt_credential")
    c.scopes = d.get("scopes") or []
    exp = _int(d, "expires_in")
    c.expires_in = exp
    c.renew_after = min(_int(d, "renew_after", exp * 3 // 4), exp)
    c.t0 = now
    return c


def parse_catalog(d):
    """A realer.Catalog from the catalog JSON; CloudError if it is unusable."""
    c = Catalog()
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
    c.host, c.port = host, int(port)
    c.client_id = m.get("client_id")
    c.ack_topic = m.get("feed_data_ack_topic")
    if not isinstance(c.ack_topic, str):
        raise CloudError("catalog", 200, "no feed_data_ack_topic")
    ce = m.get("credential_endpoint", {})
    if not isinstance(ce, dict):
        raise CloudError("catalog", 200, "credential_endpoint is not an object")
    c.cred_path = ce.get("endpoint") or "/iot/v1/mqtt-credentials"
    c.cred_method = ce.get("http_method") or "POST"
    c.cred_body = ce.get("body") if isinstance(ce.get("body"), dict) else {}
    c.routes = {}
    routes = d.get("mqtt_routes") or []
    if not isinstance(routes, list):
        raise CloudError("catalog", 200, "mqtt_routes is not a list")
    for r in routes:
        rm = r.get("mqtt") if isinstance(r, dict) else None
        rid = r.get("route_id") if isinstance(r, dict) else None
        if not isinstance(rm, dict) or not isinstance(rid, str):
            continue
        c.routes[rid] = {"feed": rm.get("feed_data_topic"), "desired": rm.get("desired_topic"),
                         "type": r.get("value_type"), "min": r.get("min"), "max": r.get("max"),
                         "name": r.get("name")}
    lim = d.get("limits") if isinstance(d.get("limits"), dict) else {}
    c.max_payload = _limit(lim, "max_payload_bytes", 2048)
    c.max_inflight = _limit(lim, "max_inflight_messages", 8)
    c.keepalive = _limit(lim, "keepalive_seconds", 0)
    return c


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


_MONTHS = "JanFebMarAprMayJunJulAugSepOctNovDec"


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


