"""firmware.config: the full example loads; every rule names the right key. CPython and unix port."""
import json
import os

from firmware import compat
from firmware.config import Config, ConfigError, load
from fakes import rmtree as _rmtree, tmpdir as _tmpdir

_RELAY = "rte_relay0000000000000000000001"
_TEMP = "rte_temperature000000000000001"
_DER = b"\x30\x82\x01\x0a" + b"\x00" * 16  # only the first byte is checked


def _base():
    return {
        "cloud": {"dialect": "realer", "api_url": "https://localhost:8443", "device_id": 12345,
                  "client_id": "demo-gateway", "ca": "ca.der",
                  "scopes": ["iot:catalog:read", "iot:mqtt:connect"]},
        "mqtt": {"keepalive": 60},
        "routes": {
            _TEMP: {"name": "temperature", "driver": "virtual_sensor", "interval": 5,
                    "deadband": 0.2},
            _RELAY: {"name": "relay", "driver": "virtual_relay", "safe": False},
        },
    }


def _secrets():
    return {"client_secret": "s3cret", "wifi": {"ssid": "home", "password": "pw"}}


def _write(p, data):
    if isinstance(data, str):
        data = data.encode()
    with open(p, "wb") as f:
        f.write(data)


def _setup(cfg=None, secrets=None, ca=_DER):
    """A flash root with the files; None leaves a file out."""
    d = _tmpdir()
    if cfg is not None:
        _write(d + "/config.json", cfg if isinstance(cfg, (str, bytes)) else json.dumps(cfg))
    if secrets is not None:
        _write(d + "/secrets.json",
               secrets if isinstance(secrets, (str, bytes)) else json.dumps(secrets))
    if ca is not None:
        _write(d + "/ca.der", ca)
    return d


_DELETE = object()


def _set(obj, dotted, value):
    """A copy of obj with the dotted path set (or removed with _DELETE)."""
    obj = json.loads(json.dumps(obj))
    parts = dotted.split(".")
    o = obj
    for p in parts[:-1]:
        o = o[p]
    if value is _DELETE:
        del o[parts[-1]]
    else:
        o[parts[-1]] = value
    return obj


def _error(cfg, secrets=None, ca=_DER):
    d = _setup(cfg, secrets, ca)
    try:
        load(d)
    except ConfigError as e:
        return e
    finally:
        _rmtree(d)
    return None


def test_full_example_loads():
    d = _setup(_base(), _secrets())
    try:
        c = load(d)
        assert c.dialect == "realer"
        assert c.api_url == "https://localhost:8443"
        assert c.device_id == 12345
        assert c.client_id == "demo-gateway"
        assert c.client_secret == "s3cret"
        assert c.ca == _DER
        assert c.scopes == ["iot:catalog:read", "iot:mqtt:connect"]
        assert c.keepalive == 60
        assert c.wifi_ssid == "home" and c.wifi_password == "pw"
        assert c.log_level == "info"
        assert c.raw == _base()
        assert sorted(c.routes) == sorted([_TEMP, _RELAY])
        assert c.routes[_TEMP] == {"name": "temperature", "driver": "virtual_sensor",
                                   "interval": 5, "deadband": 0.2, "min_interval": 0}
        assert c.routes[_RELAY] == {"name": "relay", "driver": "virtual_relay", "safe": False,
                                    "lease": 0}
        assert "s3cret" not in repr(c)
    finally:
        _rmtree(d)


def test_defaults_and_forward_compatible_top_level():
    cfg = _base()
    del cfg["mqtt"]
    del cfg["cloud"]["scopes"]
    cfg["routes"] = {_TEMP: {"driver": "virtual_sensor"}, _RELAY: {"driver": "virtual_relay"}}
    cfg["future_section"] = {"anything": [1, 2]}
    cfg["cloud"]["later_option"] = 1  # logged and ignored
    compat._quiet = True
    d = _setup(cfg, {"client_secret": "x"})
    try:
        c = load(d)
        assert c.keepalive == 60 and c.scopes is None
        assert c.wifi_ssid is None and c.wifi_password is None
        assert c.routes[_TEMP] == {"name": _TEMP, "driver": "virtual_sensor", "interval": 10,
                                   "deadband": 0, "min_interval": 0}
        assert c.routes[_RELAY] == {"name": _RELAY, "driver": "virtual_relay", "safe": False,
                                    "lease": 0}
    finally:
        compat._quiet = False
        _rmtree(d)


def test_config_error_shape():
    e = ConfigError("cloud.api_url", "must be https://")
    assert isinstance(e, ValueError)
    assert e.key == "cloud.api_url" and e.problem == "must be https://"
    assert str(e) == "cloud.api_url: must be https://"


def test_dialects():
    for d in ("blynk", "thingsboard"):
        e = _error(_set(_base(), "cloud.dialect", d), _secrets())
        assert e is not None and e.key == "cloud.dialect", (d, e)
        assert str(e) == "cloud.dialect: '%s' is not supported yet" % d, str(e)
    for v in ("mqtt", "", 5, None, _DELETE):
        e = _error(_set(_base(), "cloud.dialect", v), _secrets())
        assert e is not None and e.key == "cloud.dialect", (v, e)
        assert "realer" in e.problem and "thingsboard" in e.problem, e.problem


def test_api_url_must_be_https():
    e = _error(_set(_base(), "cloud.api_url", "http://localhost:8080"), _secrets())
    assert e.key == "cloud.api_url" and "must be https://" in e.problem, e


_CASES = [
    # (dotted path, bad value or _DELETE, expected key)
    ("cloud", _DELETE, "cloud"),
    ("cloud", [], "cloud"),
    ("cloud.api_url", "https://", "cloud.api_url"),
    ("cloud.api_url", 8443, "cloud.api_url"),
    ("cloud.api_url", _DELETE, "cloud.api_url"),
    ("cloud.device_id", 0, "cloud.device_id"),
    ("cloud.device_id", -5, "cloud.device_id"),
    ("cloud.device_id", True, "cloud.device_id"),
    ("cloud.device_id", "12345", "cloud.device_id"),
    ("cloud.device_id", 1.5, "cloud.device_id"),
    ("cloud.device_id", _DELETE, "cloud.device_id"),
    ("cloud.client_id", "", "cloud.client_id"),
    ("cloud.client_id", 7, "cloud.client_id"),
    ("cloud.client_id", _DELETE, "cloud.client_id"),
    ("cloud.scopes", "iot:catalog:read", "cloud.scopes"),
    ("cloud.scopes", [1], "cloud.scopes"),
    ("cloud.scopes", [], "cloud.scopes"),
    ("cloud.ca", _DELETE, "cloud.ca"),
    ("cloud.ca", 5, "cloud.ca"),
    ("cloud.ca", "missing.der", "cloud.ca"),
    ("mqtt", 60, "mqtt"),
    ("mqtt.keepalive", 5, "mqtt.keepalive"),
    ("mqtt.keepalive", 3601, "mqtt.keepalive"),
    ("mqtt.keepalive", "60", "mqtt.keepalive"),
    ("mqtt.keepalive", True, "mqtt.keepalive"),
    ("mqtt.keepalive", 60.5, "mqtt.keepalive"),
    ("log_level", "loud", "log_level"),
    ("routes", _DELETE, "routes"),
    ("routes", {}, "routes"),
    ("routes", [], "routes"),
    ("routes." + _TEMP, "virtual_sensor", "routes." + _TEMP),
    ("routes." + _TEMP + ".driver", "gpio", "routes." + _TEMP + ".driver"),
    ("routes." + _TEMP + ".driver", _DELETE, "routes." + _TEMP + ".driver"),
    ("routes." + _TEMP + ".driver", 3, "routes." + _TEMP + ".driver"),
    ("routes." + _TEMP + ".interval", 0, "routes." + _TEMP + ".interval"),
    ("routes." + _TEMP + ".interval", -1, "routes." + _TEMP + ".interval"),
    ("routes." + _TEMP + ".interval", "5", "routes." + _TEMP + ".interval"),
    ("routes." + _TEMP + ".interval", True, "routes." + _TEMP + ".interval"),
    ("routes." + _TEMP + ".deadband", -0.1, "routes." + _TEMP + ".deadband"),
    ("routes." + _TEMP + ".deadband", None, "routes." + _TEMP + ".deadband"),
    ("routes." + _TEMP + ".name", 5, "routes." + _TEMP + ".name"),
    ("routes." + _TEMP + ".name", "", "routes." + _TEMP + ".name"),
    ("routes." + _TEMP + ".pin", 4, "routes." + _TEMP + ".pin"),
    ("routes." + _TEMP + ".safe", False, "routes." + _TEMP + ".safe"),  # not a sensor key
    ("routes." + _RELAY + ".safe", "no", "routes." + _RELAY + ".safe"),
    ("routes." + _RELAY + ".safe", 0, "routes." + _RELAY + ".safe"),
    ("routes." + _RELAY + ".Safe", True, "routes." + _RELAY + ".Safe"),
    ("routes." + _RELAY + ".name", "temperature", "routes." + _RELAY + ".name"),  # duplicate
]


def test_each_rule_names_its_key():
    compat._quiet = True
    try:
        for path, value, key in _CASES:
            e = _error(_set(_base(), path, value), _secrets())
            assert e is not None, (path, value)
            assert e.key == key, (path, value, e.key, e.problem)
            assert str(e) == "%s: %s" % (e.key, e.problem)
    finally:
        compat._quiet = False


def test_unknown_driver_lists_known_drivers():
    e = _error(_set(_base(), "routes." + _TEMP + ".driver", "gpio"), _secrets())
    assert e.key == "routes." + _TEMP + ".driver"
    assert "gpio" in e.problem
    assert "virtual_sensor" in e.problem and "virtual_relay" in e.problem


def test_ca_pem_and_not_der():
    e = _error(_base(), _secrets(), b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert e.key == "cloud.ca" and "DER" in e.problem and "PEM" in e.problem, e
    for junk in (b"", b"\x02\x01"):
        e = _error(_base(), _secrets(), junk)
        assert e.key == "cloud.ca" and "0x30" in e.problem, e
    e = _error(_base(), _secrets(), None)
    assert e.key == "cloud.ca" and "not found" in e.problem, e


def test_files_missing_or_bad_json():
    e = _error(None, _secrets())
    assert e.key == "config.json", e
    e = _error('{"cloud": {', _secrets())
    assert e.key == "config.json" and "JSON" in e.problem, e
    e = _error(b"\xff\xfe\x00", _secrets())
    assert e.key == "config.json", e
    e = _error("[1, 2]", _secrets())
    assert e.key == "config.json", e
    e = _error(_base(), None)
    assert e.key == "secrets.client_secret", e
    e = _error(_base(), "{client_secret: x}")
    assert e.key == "secrets.json", e
    e = _error(_base(), '"s3cret"')
    assert e.key == "secrets.json", e


def test_secrets_rules():
    cases = [
        ({"wifi": {"ssid": "a"}}, "secrets.client_secret"),
        ({"client_secret": ""}, "secrets.client_secret"),
        ({"client_secret": 5}, "secrets.client_secret"),
        ({"client_secret": "x", "wifi": "home"}, "secrets.wifi"),
        ({"client_secret": "x", "wifi": {"ssid": 5}}, "secrets.wifi.ssid"),
        ({"client_secret": "x", "wifi": {"password": "pw"}}, "secrets.wifi.ssid"),
        ({"client_secret": "x", "wifi": {"ssid": "a", "password": 5}}, "secrets.wifi.password"),
    ]
    for secrets, key in cases:
        e = _error(_base(), secrets)
        assert e is not None and e.key == key, (secrets, e)


def test_config_from_dicts_without_secrets_file():
    d = _setup(None, None)
    try:
        c = Config(_base(), _secrets(), d)
        assert c.device_id == 12345 and c.ca == _DER
        try:
            Config(_base(), None, d)
            assert False, "no ConfigError"
        except ConfigError as e:
            assert e.key == "secrets.client_secret"
    finally:
        _rmtree(d)


def test_unreadable_config_is_config_error():
    d = _setup(None, _secrets())
    try:
        os.mkdir(d + "/config.json")  # a directory where the file should be
        try:
            load(d)
            assert False, "no ConfigError"
        except ConfigError as e:
            assert e.key == "config.json", e
    finally:
        _rmtree(d)


def _gpio_cfg(routes):
    raw = _base()
    raw["routes"] = routes
    return raw


def test_gpio_drivers_load_with_defaults():
    d = _tmpdir()
    try:
        _write(d + "/ca.der", b"\x30\x82\x01\x00")
        raw = _gpio_cfg({
            "r-door": {"driver": "digital_in", "pin": 4, "pull": "up"},
            "r-level": {"driver": "analog", "pin": 34, "atten_db": 6, "scale": 0.01},
            "r-t": {"driver": "dht22", "pin": 15, "field": "temperature"},
            "r-h": {"driver": "dht22", "pin": 15, "field": "humidity"},
            "r-probe": {"driver": "ds18b20", "pin": 13},
            "r-pump": {"driver": "relay", "pin": 5, "active": "low", "restore": "last",
                       "group": "valves", "max_on": 600},
            "r-fan": {"driver": "pwm", "pin": 18, "freq": 25000, "safe": 0},
        })
        c = Config(raw, _secrets(), d)
        assert c.routes["r-door"]["debounce_ms"] == 50 and c.routes["r-door"]["invert"] is False
        assert c.routes["r-level"]["samples"] == 8 and c.routes["r-level"]["atten_db"] == 6
        assert c.routes["r-pump"]["safe"] is False and c.routes["r-pump"]["active"] == "low"
        assert c.routes["r-fan"]["min"] == 0 and c.routes["r-fan"]["max"] == 100
    finally:
        _rmtree(d)


def test_gpio_driver_errors_name_the_key():
    cases = [
        ({"driver": "relay"}, "routes.r.pin"),
        ({"driver": "relay", "pin": 99}, "routes.r.pin"),
        ({"driver": "relay", "pin": 5, "active": "sideways"}, "routes.r.active"),
        ({"driver": "relay", "pin": 5, "restore": "maybe"}, "routes.r.restore"),
        ({"driver": "relay", "pin": 5, "safe": 1}, "routes.r.safe"),
        ({"driver": "relay", "pin": 5, "interval": 3}, "routes.r.interval"),
        ({"driver": "dht22", "pin": 15}, "routes.r.field"),
        ({"driver": "analog", "pin": 34, "atten_db": 3}, "routes.r.atten_db"),
        ({"driver": "analog", "pin": 34, "samples": 0}, "routes.r.samples"),
        ({"driver": "digital_in", "pin": 4, "debounce_ms": 2.5}, "routes.r.debounce_ms"),
        ({"driver": "pwm", "pin": 18, "safe": 200}, "routes.r.safe"),
        ({"driver": "pwm", "pin": 18, "min": 50, "max": 10}, "routes.r.max"),
        ({"driver": "gpio", "pin": 18}, "routes.r.driver"),
    ]
    d = _tmpdir()
    try:
        _write(d + "/ca.der", b"\x30\x82\x01\x00")
        for route, key in cases:
            try:
                Config(_gpio_cfg({"r": route}), _secrets(), d)
            except ConfigError as e:
                assert e.key == key, (route, e.key, key)
            else:
                raise AssertionError("no ConfigError for %r" % (route,))
    finally:
        _rmtree(d)


def test_two_routes_on_one_output_pin_are_refused():
    d = _tmpdir()
    try:
        _write(d + "/ca.der", b"\x30\x82\x01\x00")
        raw = _gpio_cfg({"a": {"driver": "relay", "pin": 5}, "b": {"driver": "pwm", "pin": 5}})
        try:
            Config(raw, _secrets(), d)
        except ConfigError as e:
            assert e.key in ("routes.a.pin", "routes.b.pin") and "also used" in e.problem
        else:
            raise AssertionError("no ConfigError")
    finally:
        _rmtree(d)
