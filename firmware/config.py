"""Read and check config.json and secrets.json from the flash root.

    from firmware import config
    try:
        cfg = config.load("/")
    except config.ConfigError as e:   # the only exception load() raises
        log("config", str(e))         # e.g. "routes.rte_x.driver: unknown driver 'gpio' ..."
        ...                           # keep relays safe, don't connect

config.json (unknown top-level keys are allowed, for later versions and other
modules; unknown keys inside a route are an error, since a typo there could
drive the wrong pin):

    {
      "cloud": {
        "dialect": "realer",                 # realer; blynk and thingsboard: not yet
        "api_url": "https://localhost:8443", # https:// only
        "device_id": 12345,                  # positive integer
        "client_id": "demo-gateway",
        "ca": "ca.der",                      # CA certificate, DER, path from the root
        "scopes": ["iot:catalog:read", "iot:mqtt:connect", "iot:mqtt:ack:read",
                   "iot:mqtt:feed-data:write", "iot:mqtt:desired:read"]  # optional
      },
      "mqtt": {"keepalive": 60},             # optional; seconds, 10..3600, default 60
      "log_level": "info",                   # optional; debug, info, warning, error
      "routes": {                            # route id -> route, at least one
        "rte_temperature000000000000001": {
          "name": "temperature",             # optional, default the route id
          "driver": "virtual_sensor",
          "interval": 5,                     # seconds > 0, default 10
          "deadband": 0.2                    # >= 0, default 0
        },
        "rte_relay0000000000000000000001": {
          "name": "relay",
          "driver": "virtual_relay",
          "safe": false                      # level at boot and on errors, default false
        }
      }
    }

secrets.json (kept apart so config.json can be shared; wifi is optional):

    {"client_secret": "...", "wifi": {"ssid": "...", "password": "..."}}

(The # notes above are for this docstring only: JSON has no comments.)

Every problem is a ConfigError(key, problem) with `key` the dotted path of the
bad value ("cloud.api_url", "routes.rte_x.driver", "secrets.client_secret") or
the file name when the file itself is unreadable; str(e) is "key: problem".
Route dicts in Config.routes are copies with the defaults filled in.
"""
from firmware.compat import log

_DIALECTS = ("realer", "blynk", "thingsboard")
_LEVELS = ("debug", "info", "warning", "error")
_COMMON = ("name", "driver")
# driver -> its own route keys (besides name and driver)
_DRIVERS = {
    "virtual_sensor": ("interval", "deadband", "min_interval"),
    "virtual_relay": ("safe", "lease"),
    "digital_in": ("pin", "debounce_ms", "invert", "pull", "interval"),
    "analog": ("pin", "atten_db", "samples", "scale", "offset", "decimals", "deadband",
               "min_interval", "interval"),
    "dht11": ("pin", "field", "interval"),
    "dht22": ("pin", "field", "interval"),
    "ds18b20": ("pin", "interval"),
    "relay": ("pin", "active", "safe", "restore", "group", "max_on", "lease"),
    "pwm": ("pin", "freq", "min", "max", "safe", "lease"),
}
# key -> (check, default, what); a default of _REQ means the key must be given
_REQ = object()
_CHOICES = {
    "pull": (None, "up", "down"),
    "atten_db": (0, 2.5, 6, 11),
    "field": ("temperature", "humidity"),
    "active": ("high", "low"),
    "restore": ("off", "on", "last"),
}


def _check(k, v):
    """None when the value of key k is fine, else the problem."""
    if k in _CHOICES:
        return None if v in _CHOICES[k] and type(v) is not bool else "must be one of %s" % (
            ", ".join("null" if c is None else str(c) for c in _CHOICES[k]))
    if k in ("invert",):
        return None if v is True or v is False else "must be true or false"
    if k == "group":
        return None if v is None or (isinstance(v, str) and v) else "must be a non-empty string"
    if not _is_num(v):
        return "must be a number"
    lo, hi, whole = _RANGES[k]
    if whole and not _is_int(v):
        return "must be a whole number"
    if not lo <= v <= hi:
        return "must be within %s..%s" % (lo, hi)
    return None


# numeric key -> (lowest, highest, whole number?)
_RANGES = {
    "pin": (0, 48, True), "debounce_ms": (0, 10000, True), "samples": (1, 64, True),
    "decimals": (0, 6, True), "freq": (1, 40000, True),
    "interval": (0.05, 86400, False), "min_interval": (0, 86400, False),
    "deadband": (0, 1e9, False), "max_on": (0, 86400, False), "lease": (0, 86400, False),
    "scale": (-1e9, 1e9, False), "offset": (-1e9, 1e9, False),
    "min": (-1e9, 1e9, False), "max": (-1e9, 1e9, False),
}
_DEFAULTS = {
    "pin": _REQ, "field": _REQ, "debounce_ms": 50, "invert": False, "pull": None,
    "interval": 10, "min_interval": 0, "deadband": 0, "atten_db": 11, "samples": 8, "scale": 1.0,
    "offset": 0.0, "decimals": 2, "active": "high", "restore": "off", "group": None,
    "max_on": 0, "lease": 0, "freq": 1000, "min": 0, "max": 100,
}


class ConfigError(ValueError):
    def __init__(self, key, problem):
        super().__init__("%s: %s" % (key, problem))
        self.key = key
        self.problem = problem


def _path(root, name):
    if name.startswith("/") or root in ("", "."):
        return name
    return root + ("" if root.endswith("/") else "/") + name


def _read(path, key):
    """File bytes, or None if missing; ConfigError(key, ...) for any other failure."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        if e.args and e.args[0] == 2:  # ENOENT
            return None
        raise ConfigError(key, "cannot read %s: %r" % (path, e))


def _json(root, name):
    data = _read(_path(root, name), name)
    if data is None:
        return None
    import json
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise ConfigError(name, "bad JSON: %s" % e)
    if not isinstance(obj, dict):
        raise ConfigError(name, "must be a JSON object {...}")
    return obj


def _is_int(v):
    return isinstance(v, int) and v is not True and v is not False


def _is_num(v):
    return (isinstance(v, (int, float))) and v is not True and v is not False


def _section(d, key, name, required=True):
    v = d.get(name)
    if v is None and not required:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(key, "missing" if v is None else "must be an object {...}")
    return v


def _str(d, key, name, required=True):
    v = d.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(key, "missing" if v is None else "must be a non-empty string")
    return v


def _route(rid, r):
    key = "routes." + rid
    if not isinstance(r, dict):
        raise ConfigError(key, "must be an object {...}")
    drv = r.get("driver")
    own = _DRIVERS.get(drv) if isinstance(drv, str) else None
    if own is None:
        known = ", ".join(sorted(_DRIVERS))
        raise ConfigError(key + ".driver", ("missing; one of: " + known) if drv is None
                          else "unknown driver '%s' (known: %s)" % (drv, known))
    for k in r:
        if k not in _COMMON and k not in own:
            raise ConfigError("%s.%s" % (key, k), "unknown key for driver %s (allowed: %s)"
                              % (drv, ", ".join(_COMMON + own)))
    out = {"name": rid, "driver": drv}
    name = r.get("name", rid)
    if not isinstance(name, str) or not name:
        raise ConfigError(key + ".name", "must be a non-empty string")
    out["name"] = name
    for k in own:
        if k == "safe":
            continue
        v = r.get(k, _DEFAULTS[k])
        if v is _REQ:
            raise ConfigError("%s.%s" % (key, k), "missing")
        bad = _check(k, v)
        if bad:
            raise ConfigError("%s.%s" % (key, k), bad)
        out[k] = v
    if drv == "pwm" and not out["min"] < out["max"]:
        raise ConfigError(key + ".max", "must be greater than min")
    if "safe" in own:
        if drv == "pwm":  # a level within [min, max]; default min
            v = r.get("safe", out["min"])
            if not _is_num(v) or not out["min"] <= v <= out["max"]:
                raise ConfigError(key + ".safe", "must be a number within min..max")
        else:
            v = r.get("safe", False)
            if v is not True and v is not False:
                raise ConfigError(key + ".safe", "must be true or false")
        out["safe"] = v
    return out


class Config:
    """Checked settings; build it with load(root)."""

    def __init__(self, raw, secrets, root="."):
        self.raw = raw
        cloud = _section(raw, "cloud", "cloud")

        d = cloud.get("dialect")
        if d not in _DIALECTS or not isinstance(d, str):
            choices = ", ".join(_DIALECTS)
            raise ConfigError("cloud.dialect", ("missing; one of: " + choices) if d is None
                              else "'%s' is unknown; one of: %s" % (d, choices))
        if d != "realer":
            raise ConfigError("cloud.dialect", "'%s' is not supported yet" % d)
        self.dialect = d

        url = cloud.get("api_url")
        if not isinstance(url, str) or not url.startswith("https://") or len(url) < 9:
            raise ConfigError("cloud.api_url", "missing; must be https://" if url is None
                              else "must be https://")
        self.api_url = url

        v = cloud.get("device_id")
        if not _is_int(v) or v <= 0:
            raise ConfigError("cloud.device_id", "missing" if v is None
                              else "must be a positive integer")
        self.device_id = v
        self.client_id = _str(cloud, "cloud.client_id", "client_id")

        v = cloud.get("scopes")
        if v is not None:
            if not isinstance(v, list) or not v:
                raise ConfigError("cloud.scopes", "must be a non-empty list of strings")
            for s in v:
                if not isinstance(s, str) or not s:
                    raise ConfigError("cloud.scopes", "must be a non-empty list of strings")
        self.scopes = v

        v = cloud.get("client_auth", "basic")
        if v not in ("basic", "form"):
            raise ConfigError("cloud.client_auth", "must be 'basic' (HTTP Basic header) or 'form'"
                              " (client_id/client_secret form fields)")
        self.client_auth = v

        ca = _str(cloud, "cloud.ca", "ca")
        der = _read(_path(root, ca), "cloud.ca")
        if der is None:
            raise ConfigError("cloud.ca", "file '%s' not found" % ca)
        if der.startswith(b"-----BEGIN"):
            raise ConfigError("cloud.ca", "'%s' is PEM; convert it to DER: "
                              "openssl x509 -in %s -outform DER -out ca.der" % (ca, ca))
        if der[:1] != b"\x30":
            raise ConfigError("cloud.ca", "'%s' is not a DER certificate (first byte must be 0x30)"
                              % ca)
        self.ca = der

        mqtt = _section(raw, "mqtt", "mqtt", False)
        v = mqtt.get("keepalive", 60)
        if not _is_int(v) or not 10 <= v <= 3600:
            raise ConfigError("mqtt.keepalive", "must be an integer 10..3600 (seconds)")
        self.keepalive = v

        ob = _section(raw, "outbox", "outbox", False)
        v = ob.get("capacity", 64)
        if not _is_int(v) or not 4 <= v <= 1024:
            raise ConfigError("outbox.capacity", "must be a whole number within 4..1024")
        self.outbox_capacity = v
        v = ob.get("when_full", "drop_oldest_sample")
        if v not in ("drop_oldest_sample", "drop_newest_sample"):
            raise ConfigError("outbox.when_full", "must be drop_oldest_sample or drop_newest_sample"
                              " (a command ack is never dropped while a sample can go)")
        self.outbox_when_full = v
        v = ob.get("spill", True)
        if v is not True and v is not False:
            raise ConfigError("outbox.spill", "must be true or false")
        self.outbox_spill = v

        v = raw.get("log_level", "info")
        if v not in _LEVELS or not isinstance(v, str):
            raise ConfigError("log_level", "one of: " + ", ".join(_LEVELS))
        self.log_level = v

        routes = raw.get("routes")
        if not isinstance(routes, dict) or not routes:
            raise ConfigError("routes", "missing; need at least one route" if routes is None
                              else "must be a non-empty object {route_id: {...}}")
        self.routes = {}
        names = {}
        for rid in routes:
            r = _route(rid, routes[rid])
            other = names.get(r["name"])
            if other is not None:
                raise ConfigError("routes.%s.name" % rid, "'%s' is also the name of routes.%s"
                                  % (r["name"], other))
            names[r["name"]] = rid
            self.routes[rid] = r
        used = {}
        for rid, r in self.routes.items():
            pin = r.get("pin")
            if pin is None or r["driver"] in ("dht11", "dht22"):
                continue  # one DHT sensor may feed two routes (temperature, humidity)
            if pin in used:
                raise ConfigError("routes.%s.pin" % rid, "pin %d is also used by routes.%s"
                                  % (pin, used[pin]))
            used[pin] = rid

        if secrets is None:
            raise ConfigError("secrets.client_secret", "missing: no secrets.json")
        self.client_secret = _str(secrets, "secrets.client_secret", "client_secret")
        wifi = _section(secrets, "secrets.wifi", "wifi", False)
        self.wifi_ssid = _str(wifi, "secrets.wifi.ssid", "ssid", bool(wifi))
        v = wifi.get("password")
        if v is not None and not isinstance(v, str):
            raise ConfigError("secrets.wifi.password", "must be a string")
        self.wifi_password = v

        for sec, known in ((cloud, ("dialect", "api_url", "device_id", "client_id", "ca", "scopes",
                                   "client_auth")),
                           (mqtt, ("keepalive",))):
            for k in sec:
                if k not in known:
                    log("config", "ignoring unknown key %s.%s" % (
                        "cloud" if sec is cloud else "mqtt", k))

    def __repr__(self):  # never the secrets
        return "<Config %s device %d, %d routes>" % (self.dialect, self.device_id,
                                                      len(self.routes))


def load(root="."):
    """The checked Config from <root>/config.json and secrets.json; raises ConfigError only."""
    raw = _json(root, "config.json")
    if raw is None:
        raise ConfigError("config.json", "missing file")
    return Config(raw, _json(root, "secrets.json"), root)
