"""firmware.cloud.realer: payloads, acks, desired state, catalog, credential, time parsing.

Fixture-free: runs under pytest (CPython) and on the unix port (mp_runner.py).
Dict ordering differs between the runtimes: payloads are compared parsed.
"""
import json

from firmware import compat
from firmware.cloud import realer, realer_boot
from firmware.compat import ticks_add, ticks_ms
from fakes import raises as _raises

compat._quiet = True

DID = "dsr_73ab9d85c62a7f7042427c84bc"
EXP = "2026-11-21T21:09:26.371Z"
EXP_MS = 1795295366371  # 21:02:46 is 1795294966 s; + 6 min 40 s + .371


def _desired(**kw):
    d = {"desired_id": DID, "expires_at": EXP, "sequence_number": 1,
         "valid_for_seconds": 30, "value": True, "version": 1}
    for k, v in kw.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


_DROP = object()


# --- feed data ----------------------------------------------------------------

def test_feed_payload_plain_sample():
    p = realer.feed_payload("e1-7", 21.5, "2026-11-21T21:02:46.123Z")
    assert isinstance(p, bytes)
    assert json.loads(p) == {"message_id": "e1-7", "value": 21.5,
                             "value_received_at": "2026-11-21T21:02:46.123Z"}


def test_feed_payload_keeps_boolean_and_int_values():
    assert json.loads(realer.feed_payload("m", True, "t"))["value"] is True
    v = json.loads(realer.feed_payload("m", 3, "t"))["value"]
    assert v == 3 and type(v) is int


def test_feed_payload_applied_omits_report_status():
    d = json.loads(realer.feed_payload("m-2", True, "t", DID, "applied"))
    assert d == {"message_id": "m-2", "value": True, "value_received_at": "t", "desired_id": DID}


def test_feed_payload_desired_without_status_is_applied():
    d = json.loads(realer.feed_payload("m-2", False, "t", DID))
    assert d["desired_id"] == DID
    assert "report_status" not in d


def test_feed_payload_stale_and_rejected_carry_report_status():
    for st in ("stale", "rejected"):
        d = json.loads(realer.feed_payload("m-3", False, "t", DID, st))
        assert d == {"message_id": "m-3", "value": False, "value_received_at": "t",
                     "desired_id": DID, "report_status": st}, (st, d)


def test_feed_payload_no_desired_id_unless_given():
    d = json.loads(realer.feed_payload("m-4", 1.5, "t"))
    assert "desired_id" not in d and "report_status" not in d
    # Without desired_id a report_status other than 'reported' is refused by the cloud.
    d = json.loads(realer.feed_payload("m-4", 1.5, "t", None, "stale"))
    assert "desired_id" not in d and "report_status" not in d


# --- acks -----------------------------------------------------------------------

def test_parse_ack_accepted():
    a = b'{"message_id":"m-1","retryable":false,"sequence_number":1,"status":"accepted","version":1}'
    assert realer.parse_ack(a) == ("m-1", "accepted", False, None)


def test_parse_ack_rejected_with_error_type():
    a = (b'{"desired_id":"%s","error":{"message":"x","type":"value_mismatch"},'
         b'"message_id":"m-7","retryable":false,"sequence_number":11,"status":"rejected",'
         b'"version":1}' % DID.encode())
    assert realer.parse_ack(a) == ("m-7", "rejected", False, "value_mismatch")


def test_parse_ack_retryable_error():
    a = json.dumps({"message_id": "m-9", "status": "error", "retryable": True,
                    "error": {"type": "internal_error", "message": "db"}})
    assert realer.parse_ack(a) == ("m-9", "error", True, "internal_error")


def test_parse_ack_retryable_must_be_true_itself():
    for r in ("true", 1, None):
        a = json.dumps({"message_id": "m", "status": "error", "retryable": r})
        assert realer.parse_ack(a)[2] is False, r


def test_parse_ack_error_not_an_object_has_no_type():
    a = json.dumps({"message_id": "m", "status": "rejected", "error": "boom"})
    assert realer.parse_ack(a)[3] is None


def test_parse_ack_refuses_non_objects_and_missing_status():
    for bad in (b"[]", b'"accepted"', b"null", b"7",
                b'{"message_id":"m-1"}', b'{"message_id":"m-1","status":1}',
                b'{"message_id":"m-1","status":null}', b"{", b"not json"):
        _raises(ValueError, realer.parse_ack, bad)


# --- desired state ------------------------------------------------------------

def test_parse_desired_valid_message():
    raw = ('{"desired_id":"%s","expires_at":"%s","sequence_number":1,'
           '"valid_for_seconds":30,"value":true,"version":1}' % (DID, EXP)).encode()
    d = realer.parse_desired(raw)
    assert d["desired_id"] == DID
    assert d["sequence_number"] == 1
    assert d["valid_for_seconds"] == 30
    assert d["value"] is True
    assert d["expires_ms"] == EXP_MS, d["expires_ms"]


def test_parse_desired_boundaries_accepted():
    assert realer.parse_desired(_desired(desired_id="d" * 64))["desired_id"] == "d" * 64
    assert realer.parse_desired(_desired(valid_for_seconds=1))["valid_for_seconds"] == 1
    assert realer.parse_desired(_desired(valid_for_seconds=86400))["valid_for_seconds"] == 86400
    assert realer.parse_desired(_desired(sequence_number=2 ** 40))["sequence_number"] == 2 ** 40
    assert realer.parse_desired(_desired(value=None))["value"] is None  # present, even if null


def test_parse_desired_expires_at_optional_or_unreadable():
    assert realer.parse_desired(_desired(expires_at=_DROP))["expires_ms"] is None
    assert realer.parse_desired(_desired(expires_at="soon"))["expires_ms"] is None
    assert realer.parse_desired(_desired(expires_at=1795295366))["expires_ms"] is None


_HOSTILE = (
    ("truncated", _desired()[:-1]),
    ("truncated half", _desired()[:20]),
    ("empty", b""),
    ("not utf-8", _desired().replace(b"dsr_", b"\xff\xfe_")),
    ("array", b"[1, 2, 3]"),
    ("string", b'"hello"'),
    ("null", b"null"),
    ("number", b"1"),
    ("version 2", _desired(version=2)),
    ("version missing", _desired(version=_DROP)),
    ("version string", _desired(version="1")),
    ("desired_id missing", _desired(desired_id=_DROP)),
    ("desired_id empty", _desired(desired_id="")),
    ("desired_id int", _desired(desired_id=12345)),
    ("desired_id 65 chars", _desired(desired_id="d" * 65)),
    ("value missing", _desired(value=_DROP)),
    ("sequence missing", _desired(sequence_number=_DROP)),
    ("sequence null", _desired(sequence_number=None)),
    ("sequence negative", _desired(sequence_number=-1)),
    ("sequence float", _desired(sequence_number=2.0)),
    ("sequence bool", _desired(sequence_number=True)),
    ("sequence string", _desired(sequence_number="3")),
    ("sequence huge", _desired(sequence_number=2 ** 60)),
    ("valid_for 0", _desired(valid_for_seconds=0)),
    ("valid_for -1", _desired(valid_for_seconds=-1)),
    ("valid_for 86401", _desired(valid_for_seconds=86401)),
    ("valid_for float", _desired(valid_for_seconds=30.0)),
    ("valid_for string", _desired(valid_for_seconds="30")),
    ("valid_for bool", _desired(valid_for_seconds=True)),
    ("valid_for missing", _desired(valid_for_seconds=_DROP)),
    ("NaN sequence", ('{"desired_id":"%s","sequence_number":NaN,"valid_for_seconds":30,'
                      '"value":true,"version":1}' % DID).encode()),
    ("NaN valid_for", ('{"desired_id":"%s","sequence_number":1,"valid_for_seconds":NaN,'
                       '"value":true,"version":1}' % DID).encode()),
    ("Infinity sequence", ('{"desired_id":"%s","sequence_number":Infinity,'
                           '"valid_for_seconds":30,"value":true,"version":1}' % DID).encode()),
)


def test_parse_desired_base_of_hostile_cases_is_valid():
    # The hostile cases below are this message with one thing broken.
    assert realer.parse_desired(_desired())["sequence_number"] == 1


def test_parse_desired_hostile_messages_raise_value_error():
    assert len(_HOSTILE) >= 15
    for why, raw in _HOSTILE:
        try:
            d = realer.parse_desired(raw)
        except ValueError:
            continue
        raise AssertionError("%s accepted: %r" % (why, d))


def test_parse_desired_nan_value_never_reaches_a_relay_as_a_number():
    # MicroPython's json refuses NaN (ValueError); CPython parses it. Either way
    # it must not come out as a usable finite value.
    raw = ('{"desired_id":"%s","sequence_number":1,"valid_for_seconds":30,'
           '"value":NaN,"version":1}' % DID).encode()
    try:
        d = realer.parse_desired(raw)
    except ValueError:
        return
    assert d["value"] != d["value"]  # NaN, left to CommandRoute.check (unit_routes)


# --- time parsing -------------------------------------------------------------

def test_rfc3339_z():
    assert realer.rfc3339_ms("2026-11-21T21:02:46Z") == 1795294966000


def test_rfc3339_millis_are_integers():
    # Integer ms: the ESP32's single-precision floats cannot hold an epoch second.
    assert realer.rfc3339_ms("2026-11-21T21:02:46.123Z") == 1795294966123
    assert realer.rfc3339_ms("2026-11-21T21:02:46.5Z") == 1795294966500
    assert realer.rfc3339_ms("2026-11-21T21:02:46.123456789Z") == 1795294966123
    assert type(realer.rfc3339_ms("2026-11-21T21:02:46.123Z")) is int


def test_rfc3339_offsets():
    assert realer.rfc3339_ms("2026-11-21T22:02:46+01:00") == 1795294966000
    assert realer.rfc3339_ms("2026-11-21T20:32:46-00:30") == 1795294966000
    assert realer.rfc3339_ms("2026-11-22T06:02:46.250+09:00") == 1795294966250


def test_rfc3339_lowercase_and_known_dates():
    assert realer.rfc3339_ms("2026-11-21t21:02:46z") == 1795294966000
    assert realer.rfc3339_ms("2000-02-29T00:00:00Z") == 951782400000  # leap day
    assert realer.rfc3339_ms("2024-02-29T12:00:00Z") == 1709208000000
    t = realer.rfc3339_ms("1970-01-01T00:00:00Z")
    assert t == 0 and t is not None


def test_rfc3339_out_of_range_fields_are_none():
    for s in ("2026-13-21T21:02:46Z", "2026-11-40T21:02:46Z", "2026-11-21T25:02:46Z",
              "2026-11-21T21:61:46Z", "2026-11-21T21:02:46.Z"):
        assert realer.rfc3339_ms(s) is None, s


def test_rfc3339_garbage_is_none():
    for s in ("", "garbage", "2026-11-21", "2026-11-21T21:02:46",
              "2026-11-21 21:02:46Z", "2026/11/21T21:02:46Z", "2026-1x-21T21:02:46Z",
              "2026-11-21T21:02:46+0100", "2026-11-21T21:02:46.123",
              "2026-11-21T21:02:46Zjunk", "2026-11-21T21:02:46 Z",
              "2026-11-21T21:02:46+01:xx", "abcd-ef-ghTij:kl:mnZ"):
        assert realer.rfc3339_ms(s) is None, s


def test_http_date():
    assert realer_boot.http_date("Sat, 21 Nov 2026 21:08:36 GMT") == 1795295316
    assert realer_boot.http_date("Tue, 29 Feb 2000 00:00:00 GMT") == 951782400
    t = realer_boot.http_date("Thu, 01 Jan 1970 00:00:00 GMT")
    assert t == 0 and t is not None


def test_http_date_bad_is_none():
    for s in ("", "garbage", "Sat, 21 Nov 2026 21:08:36 UTC", "Sat, 21 Nov 2026 21:08:36",
              "Sat, 21 Foo 2026 21:08:36 GMT", "Sat, 21 ovD 2026 21:08:36 GMT",
              "Sat, 21 nov 2026 21:08:36 GMT", "Sat, 21 Nov 2026 21:08 GMT",
              "Sat, 21 Nov 2026 21:xx:36 GMT", "Sat, xx Nov 2026 21:08:36 GMT",
              "Sat, 21 Nov 20x6 21:08:36 GMT", "Saturday, 21-Nov-26 21:08:36 GMT",
              "Sat Nov 21 21:08:36 2026"):
        assert realer_boot.http_date(s) is None, s


# --- catalog ------------------------------------------------------------------

def _catalog(**mqtt):
    m = {"broker_url": "mqtts://broker.example.com:8883", "client_id": "gw-7",
         "feed_data_ack_topic": "realer/devices/7/ack",
         "credential_endpoint": {"endpoint": "/iot/v1/mqtt-credentials", "http_method": "POST",
                                 "body": {"device_id": 7, "scopes": ["iot:mqtt:connect"]}},
         "something_new": {"nested": [1, 2]}}
    for k, v in mqtt.items():
        if v is _DROP:
            m.pop(k)
        else:
            m[k] = v
    return {"mqtt": m, "unknown_top_level": True,
            "mqtt_routes": [
                {"route_id": "r-temp", "name": "temp", "value_type": "number", "future": 1,
                 "mqtt": {"feed_data_topic": "realer/r-temp/feed"}},
                {"route_id": "r-relay", "name": "relay", "value_type": "integer",
                 "min": 0, "max": 100,
                 "mqtt": {"feed_data_topic": "realer/r-relay/feed",
                          "desired_topic": "realer/r-relay/desired"}},
                "junk", {"route_id": 5, "mqtt": {}}, {"route_id": "r-nomqtt"}],
            "limits": {"max_payload_bytes": 1024, "max_inflight_messages": 4,
                       "keepalive_seconds": 30, "max_publish_per_second": 20}}


def test_catalog_parses_broker_topics_routes_limits():
    c = realer_boot.parse_catalog(_catalog())
    assert (c.host, c.port) == ("broker.example.com", 8883)
    assert c.ack_topic == "realer/devices/7/ack"
    assert c.client_id == "gw-7"
    assert (c.cred_path, c.cred_method) == ("/iot/v1/mqtt-credentials", "POST")
    assert c.cred_body == {"device_id": 7, "scopes": ["iot:mqtt:connect"]}
    assert sorted(c.routes) == ["r-relay", "r-temp"]  # junk entries skipped
    relay = c.routes["r-relay"]
    assert relay["feed"] == "realer/r-relay/feed"
    assert relay["desired"] == "realer/r-relay/desired"
    assert (relay["type"], relay["min"], relay["max"], relay["name"]) == ("integer", 0, 100, "relay")
    assert c.routes["r-temp"]["desired"] is None
    assert (c.max_payload, c.max_inflight, c.keepalive) == (1024, 4, 30)


def test_catalog_broker_port_default_and_path():
    c = realer_boot.parse_catalog(_catalog(broker_url="mqtts://broker.example.com"))
    assert (c.host, c.port) == ("broker.example.com", 8883)
    c = realer_boot.parse_catalog(_catalog(broker_url="mqtts://10.0.0.2:18883/mqtt"))
    assert (c.host, c.port) == ("10.0.0.2", 18883)


def test_catalog_refuses_plain_or_missing_broker():
    for url in ("mqtt://broker.example.com:1883", "http://broker.example.com",
                "https://broker.example.com", "tcp://b:8883", "", None, 8883,
                "mqtts://broker.example.com:abc"):
        _raises(realer.CloudError, realer_boot.parse_catalog, _catalog(broker_url=url))
    _raises(realer.CloudError, realer_boot.parse_catalog, _catalog(broker_url=_DROP))


def test_catalog_refuses_missing_mqtt_or_ack_topic():
    _raises(realer.CloudError, realer_boot.parse_catalog, {"mqtt_routes": []})
    _raises(realer.CloudError, realer_boot.parse_catalog, {"mqtt": "mqtts://x"})
    _raises(realer.CloudError, realer_boot.parse_catalog, _catalog(feed_data_ack_topic=_DROP))
    _raises(realer.CloudError, realer_boot.parse_catalog, _catalog(feed_data_ack_topic=5))
    e = _raises(realer.CloudError, realer_boot.parse_catalog, _catalog(broker_url="mqtt://b:1883"))
    assert e.stage == "catalog" and not e.auth


def test_catalog_limits_default_when_absent():
    d = _catalog()
    d.pop("limits")
    c = realer_boot.parse_catalog(d)
    assert (c.max_payload, c.max_inflight, c.keepalive) == (2048, 8, 0)
    d["limits"] = ["not", "an", "object"]
    c = realer_boot.parse_catalog(d)
    assert (c.max_payload, c.max_inflight, c.keepalive) == (2048, 8, 0)


def test_catalog_limits_default_when_wrong_typed():
    d = _catalog()
    d["limits"] = {"max_payload_bytes": "1024", "max_inflight_messages": True,
                   "keepalive_seconds": 30.5}
    c = realer_boot.parse_catalog(d)
    assert (c.max_payload, c.max_inflight, c.keepalive) == (2048, 8, 0)
    d["limits"] = {"max_payload_bytes": 0, "max_inflight_messages": -3, "keepalive_seconds": None}
    c = realer_boot.parse_catalog(d)
    assert (c.max_payload, c.max_inflight, c.keepalive) == (2048, 8, 0)


def test_catalog_credential_endpoint_defaults():
    c = realer_boot.parse_catalog(_catalog(credential_endpoint=_DROP))
    assert (c.cred_path, c.cred_method, c.cred_body) == ("/iot/v1/mqtt-credentials", "POST", {})
    c = realer_boot.parse_catalog(_catalog(credential_endpoint={"body": "nope"}))
    assert c.cred_body == {}


def test_catalog_malformed_shapes_raise_cloud_error():
    # A broken catalog must end as CloudError (the supervisor's retry path), not as
    # AttributeError/TypeError that nothing catches.
    for bad in (_catalog(credential_endpoint="x"), _catalog(credential_endpoint=[1])):
        _raises(realer.CloudError, realer_boot.parse_catalog, bad)
    d = _catalog()
    d["mqtt_routes"] = 5
    _raises(realer.CloudError, realer_boot.parse_catalog, d)


# --- credential ----------------------------------------------------------------

def _cred(ago_ms, **kw):
    d = {"mqtt_client_id": "gw-7", "mqtt_username": "u-1", "mqtt_credential": "secret",
         "expires_in": 600, "renew_after": 400, "scopes": ["iot:mqtt:connect"]}
    d.update(kw)
    return realer_boot.credential(d, ticks_add(ticks_ms(), -ago_ms))


def test_credential_fields():
    c = _cred(0)
    assert (c.client_id, c.username, c.password) == ("gw-7", "u-1", "secret")
    assert (c.expires_in, c.renew_after) == (600, 400)
    assert c.scopes == ["iot:mqtt:connect"]


def test_credential_fresh_is_usable_not_due():
    c = _cred(1000)
    now = ticks_ms()
    assert c.usable(now)
    assert not c.renew_due(now)


def test_credential_renew_due_after_renew_after():
    assert not _cred(399000).renew_due(ticks_ms())
    c = _cred(401000)
    now = ticks_ms()
    assert c.renew_due(now)
    assert c.usable(now)  # due for renewal, still good for a session


def test_credential_not_usable_near_or_past_expiry():
    assert not _cred(596000).usable(ticks_ms())  # 4 s left: not worth a handshake
    assert not _cred(700000).usable(ticks_ms())
    assert _cred(590000).usable(ticks_ms())


def test_credential_renew_after_default_and_clamp():
    d = {"mqtt_client_id": "c", "mqtt_username": "u", "mqtt_credential": "p", "expires_in": 800}
    assert realer_boot.credential(d, ticks_ms()).renew_after == 600  # 3/4 of the life
    d["renew_after"] = 5000
    assert realer_boot.credential(d, ticks_ms()).renew_after == 800  # never past the end


def test_credential_refuses_missing_or_bad_fields():
    base = {"mqtt_client_id": "c", "mqtt_username": "u", "mqtt_credential": "p", "expires_in": 60}
    for k, v in (("mqtt_client_id", None), ("mqtt_username", ""), ("mqtt_credential", 5),
                 ("expires_in", 0), ("expires_in", -1), ("expires_in", "60"),
                 ("expires_in", True), ("expires_in", 60.0), ("renew_after", 0),
                 ("renew_after", "30")):
        d = dict(base)
        d[k] = v
        _raises(ValueError, realer_boot.credential, d, ticks_ms())
    d = dict(base)
    d.pop("expires_in")
    _raises(ValueError, realer_boot.credential, d, ticks_ms())


# --- Realer (no network) ------------------------------------------------------

class _Cfg:
    api_url = "https://api.example.com/"
    scopes = None
    client_auth = "basic"

    def __init__(self, routes):
        self.routes = routes


def test_realer_scopes_include_desired_only_with_a_relay():
    r = realer.Realer(_Cfg({"r-temp": {"driver": "virtual_sensor"}}), None)
    assert "iot:mqtt:desired:read" not in r.scopes
    assert "iot:mqtt:feed-data:write" in r.scopes
    r = realer.Realer(_Cfg({"r-relay": {"driver": "virtual_relay"}}), None)
    assert "iot:mqtt:desired:read" in r.scopes
    assert r.api == "https://api.example.com"


def test_realer_server_now_none_before_any_date():
    r = realer.Realer(_Cfg({}), None)
    assert r.server_now_ms() is None
    r.published(1795295316000, ticks_ms())  # no Date yet: nothing to check it against
    assert r.server_now_ms() is None and r.floor is None


T0 = 1795295316000  # a Date header's whole second, in ms


def _dated(ago_ms=0):
    r = realer.Realer(_Cfg({}), None)
    r.server = (T0, ticks_add(ticks_ms(), -ago_ms))
    return r


def test_server_time_is_the_date_plus_time_since():
    r = _dated(ago_ms=2000)
    assert 0 <= r.server_now_ms() - (T0 + 2000) < 50


def test_a_desired_publish_time_raises_the_bound_to_the_millisecond():
    r = _dated()
    now = ticks_ms()
    r.published(T0 + 900, now)  # the Date said T0; the server was already at T0 + 0.9 s
    assert 900 <= r.server_now_ms() - T0 < 950
    r.published(T0 + 100, now)  # an older message (a retained one): no lower
    assert 900 <= r.server_now_ms() - T0 < 950
    r.published(T0 + 2500, now)  # within the Date's second plus transit and slack
    assert 2500 <= r.server_now_ms() - T0 < 2550


def test_a_publish_time_far_ahead_of_the_date_is_not_believed():
    r = _dated()
    r.published(T0 + 3001, ticks_ms())
    assert r.floor is None
    r.published(T0 + 86400000 * 365, ticks_ms())  # a year ahead: would make every command stale
    assert 0 <= r.server_now_ms() - T0 < 50
    # The limit moves with the Date bound: 3 s past it, measured at arrival.
    r = _dated(ago_ms=10000)
    r.published(T0 + 12900, ticks_ms())
    assert r.floor is not None and 12900 <= r.server_now_ms() - T0 < 12950


def test_realer_subscriptions_follow_desired_scope():
    r = realer.Realer(_Cfg({"r-relay": {"driver": "virtual_relay"}}), None)
    r.catalog = realer_boot.parse_catalog(_catalog())
    r.cred = _cred(0, scopes=["iot:mqtt:connect", "iot:mqtt:desired:read"])
    subs = r.subscriptions(["r-relay", "r-temp", "r-absent"])
    assert sorted(subs) == sorted([("realer/devices/7/ack", 1), ("realer/r-relay/desired", 1)])
    assert subs[0] == ("realer/devices/7/ack", 1)
    r.cred = _cred(0, scopes=["iot:mqtt:connect"])  # desired scope not granted
    assert r.subscriptions(["r-relay"]) == [("realer/devices/7/ack", 1)]
