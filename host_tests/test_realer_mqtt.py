"""Contract: the MQTT side of the local Realer cloud, as seed 001 describes it.

Scopes enforced by the broker (SUBACK 0x80, publishes dropped after PUBACK),
credential expiry / revocation / renewal as broker kicks, desired-state
messages, command acknowledgements, and feed-data validation.

Note on codes: the harness reports paho's ReasonCode values. For MQTT 3.1.1,
paho maps a SUBACK failure to 0x80 (128) unchanged, but maps CONNACK refusals
4 / 5 to the MQTT 5 values 134 / 135, so both spellings are accepted.
"""
import datetime
import json
import re
import time
import uuid

import pytest

from realer_harness import feed

CONNECT = "iot:mqtt:connect"
ACK_READ = "iot:mqtt:ack:read"
WRITE = "iot:mqtt:feed-data:write"
DESIRED = "iot:mqtt:desired:read"

SUBACK_REFUSED = 0x80
CONNACK_REFUSED = {4, 5, 134, 135}  # bad user name or password / not authorised (3.1.1, 5.0)
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def _mid():
    return "mq-" + uuid.uuid4().hex


def _device(cloud, cred, connect=True):
    """A harness Device whose automatic reconnect is pushed out of the test's way.

    paho's loop thread reconnects by itself after a kick; a kicked client that
    reconnected within a second would take its client id back and muddle the
    takeover and refusal checks below.
    """
    dev = cloud.mqtt(cred, connect=False)
    dev.client.reconnect_delay_set(min_delay=120, max_delay=240)
    if connect:
        assert dev.connect() == 0
    return dev


def _routes(catalog):
    return {r["name"]: r["mqtt"] for r in catalog["mqtt_routes"]}


def _catalog(cloud, index):
    tok = cloud.token(index)
    r = cloud.api.get("/iot/v1/devices/%d/mqtt" % cloud.client(index)[2],
                      headers={"Authorization": "Bearer " + tok})
    assert r.status_code == 200, r.text
    return r.json()


def _ack(dev, ack_topic, message_id=None, timeout=10):
    """The next ack (for `message_id` when given; acks of other messages are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        a = dev.next_json(ack_topic, timeout=max(0.01, deadline - time.monotonic()))
        if message_id is None or a.get("message_id") == message_id:
            return a


def _wait_until(fn, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(0.05)


def _received(cloud, message_id):
    return cloud.ledger("SELECT status, error_type FROM received WHERE message_id=?", (message_id,))


def _cred_row(cloud, username):
    rows = cloud.ledger("SELECT removed_at, removed_why, expires_at, hard_expires_at FROM credentials"
                        " WHERE username=?", (username,))
    assert len(rows) == 1, rows
    return rows[0]


def _close(*devs):
    for d in devs:
        if d is not None:
            d.close()


# --- 1. subscribe scopes ------------------------------------------------------

def test_desired_subscribe_needs_desired_read_scope(cloud):
    _, catalog, cred = cloud.bootstrap(cred_scopes=[CONNECT, ACK_READ, WRITE])
    assert DESIRED not in cred["scopes"]
    routes = _routes(catalog)
    ack_topic = catalog["mqtt"]["feed_data_ack_topic"]
    dev = _device(cloud, cred)
    try:
        assert dev.subscribe(routes["relay"]["desired_topic"]) == SUBACK_REFUSED
        assert dev.subscribe(routes["dimmer"]["desired_topic"]) == SUBACK_REFUSED
        assert dev.subscribe(ack_topic) == 1
        # The refusal is real: a desired message (retained, from the app service)
        # does not reach this client. The app service publishes it before the ack
        # below, from the same session, so it would have arrived first.
        d = cloud.desired("relay", True, valid_for=30)
        mid = _mid()
        dev.publish(routes["temperature"]["feed_data_topic"], feed(mid, 20.0))
        assert _ack(dev, ack_topic, mid)["status"] == "accepted"
        seen = []
        while not dev.messages.empty():
            seen.append(dev.messages.get_nowait())
        assert [t for t, _ in seen if t == routes["relay"]["desired_topic"]] == [], seen
        assert d["desired_id"]
    finally:
        _close(dev)


def test_ack_subscribe_needs_ack_read_scope(cloud):
    _, catalog, cred = cloud.bootstrap(cred_scopes=[CONNECT, WRITE, DESIRED])
    dev = _device(cloud, cred)
    try:
        assert dev.subscribe(catalog["mqtt"]["feed_data_ack_topic"]) == SUBACK_REFUSED
        # ... while the scope it does hold works on the same connection.
        assert dev.subscribe(_routes(catalog)["relay"]["desired_topic"]) == 1
    finally:
        _close(dev)


# --- 2. publish / subscribe only on the device's own topics ------------------

def test_cannot_publish_or_subscribe_on_another_devices_topics(cloud):
    _, catalog, cred = cloud.bootstrap()
    other = _catalog(cloud, 1)
    assert other["mqtt"]["client_id"] != catalog["mqtt"]["client_id"]
    other_topic = other["mqtt_routes"][0]["mqtt"]["feed_data_topic"]
    ack_topic = catalog["mqtt"]["feed_data_ack_topic"]
    dev = _device(cloud, cred)
    try:
        assert dev.subscribe(ack_topic) == 1
        assert dev.subscribe(other["mqtt"]["feed_data_ack_topic"]) == SUBACK_REFUSED
        assert dev.subscribe("realer/iot/v1/devices/+/acks") == SUBACK_REFUSED
        assert dev.subscribe("#") == SUBACK_REFUSED

        foreign = _mid()
        info = dev.publish(other_topic, feed(foreign, 21.0))
        assert info.rc == 0 and info.is_published()  # MQTT 3.1.1: PUBACK even when denied
        legit = _mid()
        dev.publish(_routes(catalog)["temperature"]["feed_data_topic"], feed(legit, 21.0))
        assert _ack(dev, ack_topic, legit)["status"] == "accepted"
    finally:
        _close(dev)
    assert _received(cloud, legit) == [("accepted", None)]
    assert _received(cloud, foreign) == []
    assert cloud.ledger("SELECT COUNT(*) FROM effects WHERE message_id=?", (foreign,)) == [(0,)]


def test_cannot_publish_own_feed_data_without_write_scope(cloud):
    _, catalog, cred = cloud.bootstrap(cred_scopes=[CONNECT, ACK_READ])
    routes = _routes(catalog)
    ack_topic = catalog["mqtt"]["feed_data_ack_topic"]
    dev = _device(cloud, cred)
    denied = _mid()
    try:
        assert dev.subscribe(ack_topic) == 1
        info = dev.publish(routes["temperature"]["feed_data_topic"], feed(denied, 22.0))
        assert info.rc == 0 and info.is_published()
    finally:
        _close(dev)
    # A writer publishes afterwards; once its ack is back, the app service has
    # handled everything the broker forwarded before it.
    _, _, writer_cred = cloud.bootstrap()
    writer = _device(cloud, writer_cred)
    legit = _mid()
    try:
        assert writer.subscribe(ack_topic) == 1
        writer.publish(routes["temperature"]["feed_data_topic"], feed(legit, 22.0))
        assert _ack(writer, ack_topic, legit)["status"] == "accepted"
    finally:
        _close(writer)
    assert _received(cloud, legit) == [("accepted", None)]
    assert _received(cloud, denied) == []


# --- 3. hard expiry -----------------------------------------------------------

def test_hard_expiry_kicks_the_session_and_refuses_the_tuple(own_cloud):
    cloud = own_cloud("--credential-ttl", "4")
    t0 = time.monotonic()
    _, catalog, cred = cloud.bootstrap()
    issued_by = time.monotonic()
    assert cred["session_hard_expires_in"] == 4 and cred["expires_in"] == 4
    dev = _device(cloud, cred)
    again = None
    try:
        assert dev.subscribe(catalog["mqtt"]["feed_data_ack_topic"]) == 1
        dev.disconnects.get(timeout=max(0.1, issued_by + 4 + 2 - time.monotonic()))
        kicked_after = time.monotonic() - t0
        assert kicked_after >= 3.5, "kicked %.2f s after issue; the hard expiry is 4 s" % kicked_after
        again = _device(cloud, cred, connect=False)
        assert again.connect() in CONNACK_REFUSED
    finally:
        _close(dev, again)
    row = _wait_until(lambda: (lambda r: r if r[1] else None)(_cred_row(cloud, cred["mqtt_username"])),
                      what="the credentials row to be marked removed")
    removed_at, why, _, hard_expires_at = row
    assert why == "hard expiry"
    assert removed_at >= hard_expires_at


# --- 4. revoke ----------------------------------------------------------------

def test_revoke_kicks_the_session_and_refuses_the_tuple(cloud):
    tok, catalog, cred = cloud.bootstrap()
    cid, secret, _ = cloud.client(0)
    dev = _device(cloud, cred)
    again = None
    try:
        assert dev.subscribe(catalog["mqtt"]["feed_data_ack_topic"]) == 1
        assert dev.disconnects.empty()
        r = cloud.api.post("/oauth/revoke", data={"token": tok}, auth=(cid, secret))
        assert r.status_code == 200, r.text
        dev.disconnects.get(timeout=5)
        again = _device(cloud, cred, connect=False)
        assert again.connect() in CONNACK_REFUSED
    finally:
        _close(dev, again)
    assert _cred_row(cloud, cred["mqtt_username"])[1] == "revoked"


# --- 5. renewal: a second tuple takes over, the first stays valid --------------

def test_renewed_credential_takes_over_and_first_stays_valid(cloud):
    tok, catalog, first = cloud.bootstrap()
    r = cloud.api.post("/iot/v1/mqtt-credentials", json=catalog["mqtt"]["credential_endpoint"]["body"],
                       headers={"Authorization": "Bearer " + tok})
    assert r.status_code == 201, r.text
    second = r.json()["mqtt"]
    assert first["mqtt_username"] != second["mqtt_username"]
    assert first["mqtt_credential"] != second["mqtt_credential"]
    assert first["mqtt_client_id"] == second["mqtt_client_id"]
    ack_topic = catalog["mqtt"]["feed_data_ack_topic"]
    temp = _routes(catalog)["temperature"]["feed_data_topic"]

    dev1 = _device(cloud, first)
    dev2 = back = None
    try:
        assert dev1.subscribe(ack_topic) == 1
        dev2 = _device(cloud, second)          # same client id: the broker drops dev1
        dev1.disconnects.get(timeout=5)
        assert dev2.subscribe(ack_topic) == 1
        mid = _mid()
        dev2.publish(temp, feed(mid, 23.0))
        assert _ack(dev2, ack_topic, mid)["status"] == "accepted"

        back = _device(cloud, first)           # the first tuple still connects ...
        dev2.disconnects.get(timeout=5)        # ... and takes the client id back
        assert back.subscribe(ack_topic) == 1
        mid = _mid()
        back.publish(temp, feed(mid, 23.5))
        assert _ack(back, ack_topic, mid)["status"] == "accepted"
    finally:
        _close(dev1, dev2, back)
    now = time.time()
    for cred in (first, second):
        removed_at, why, expires_at, _ = _cred_row(cloud, cred["mqtt_username"])
        assert (removed_at, why) == (None, None)
        assert expires_at > now


# --- 6. desired state ---------------------------------------------------------

def test_desired_state_messages_are_delivered_ordered_and_retained(cloud):
    _, catalog, cred = cloud.bootstrap()
    topic = _routes(catalog)["relay"]["desired_topic"]
    dev = _device(cloud, cred)
    later = None
    try:
        assert dev.subscribe(topic) == 1
        sent = []
        for value in (True, False, True):
            before = time.time()
            d = cloud.desired("relay", value, valid_for=30)
            assert d["topic"] == topic
            assert d["version"] == 1 and d["value"] is value and d["valid_for_seconds"] == 30
            assert isinstance(d["desired_id"], str) and d["desired_id"]
            assert isinstance(d["sequence_number"], int) and not isinstance(d["sequence_number"], bool)
            assert RFC3339_Z.match(d["expires_at"]), d["expires_at"]
            exp = datetime.datetime.fromisoformat(d["expires_at"].replace("Z", "+00:00")).timestamp()
            assert before + 29 <= exp <= time.time() + 31
            sent.append(d)
        seqs = [d["sequence_number"] for d in sent]
        assert seqs[0] < seqs[1] < seqs[2]
        assert len({d["desired_id"] for d in sent}) == 3

        # The subscriber gets all three, in order, exactly as the admin reported them
        # (a retained message from an earlier test may come first).
        got = []
        while len(got) < 3:
            m = dev.next_json(topic, timeout=10)
            if got or m["desired_id"] == sent[0]["desired_id"]:
                got.append(m)
        want = [{k: v for k, v in d.items() if k != "topic"} for d in sent]
        assert got == want
        assert set(got[0]) == {"version", "desired_id", "value", "valid_for_seconds", "expires_at",
                               "sequence_number"}
    finally:
        _close(dev)
    # Retained: a device that subscribes afterwards gets the latest one, first.
    later = _device(cloud, cloud.bootstrap()[2])
    try:
        assert later.subscribe(topic) == 1
        assert later.next_json(topic, timeout=10) == want[-1]
    finally:
        _close(later)


@pytest.mark.parametrize("route,value", [
    ("relay", "on"),
    ("relay", 2),
    ("dimmer", 500),
    ("dimmer", -1),
    ("dimmer", "50"),
    ("temperature", 20),   # a sensor route has no desired state
])
def test_desired_value_must_fit_the_route(cloud, route, value):
    count = "SELECT COUNT(*) FROM desired"
    before = cloud.ledger(count)
    body = cloud.admin("POST", "/admin/desired", {"route": route, "value": value, "valid_for": 30},
                       expect=400)
    assert body["error"] == "invalid_request"
    assert cloud.ledger(count) == before


# --- 7. command acknowledgements ---------------------------------------------

def test_command_acks(cloud):
    _, catalog, cred = cloud.bootstrap()
    routes = _routes(catalog)
    relay = routes["relay"]["feed_data_topic"]
    ack_topic = catalog["mqtt"]["feed_data_ack_topic"]
    dev = _device(cloud, cred)

    def send(topic, mid, value, **extra):
        dev.publish(topic, feed(mid, value, **extra))
        return _ack(dev, ack_topic, mid)

    def desired_row(desired_id):
        return cloud.ledger("SELECT ack_status, ack_message_id FROM desired WHERE desired_id=?",
                            (desired_id,))

    try:
        assert dev.subscribe(ack_topic) == 1

        # applied (the default report_status) with the desired value
        d1 = cloud.desired("relay", True, valid_for=30)["desired_id"]
        m1 = _mid()
        a = send(relay, m1, True, desired_id=d1)
        assert (a["status"], a["retryable"], a["desired_id"], a["message_id"]) == (
            "accepted", False, d1, m1)
        assert "error" not in a
        assert desired_row(d1) == [("applied", m1)]

        # stale, reporting the current physical value
        d2 = cloud.desired("relay", False, valid_for=30)["desired_id"]
        m2 = _mid()
        a = send(relay, m2, True, desired_id=d2, report_status="stale")
        assert (a["status"], a["desired_id"]) == ("accepted", d2)
        assert desired_row(d2) == [("stale", m2)]

        # an unknown desired_id
        m = _mid()
        a = send(relay, m, True, desired_id="dsr_" + uuid.uuid4().hex[:26])
        assert (a["status"], a["retryable"], a["error"]["type"]) == ("rejected", False, "unknown_desired_id")

        # applied, but not the desired value
        d3 = cloud.desired("relay", True, valid_for=30)["desired_id"]
        m = _mid()
        a = send(relay, m, False, desired_id=d3)
        assert (a["status"], a["retryable"], a["error"]["type"]) == ("rejected", False, "value_mismatch")
        assert desired_row(d3) == [(None, None)]

        # a second, different message answering an answered desired_id
        m = _mid()
        a = send(relay, m, True, desired_id=d1)
        assert (a["status"], a["retryable"], a["error"]["type"]) == (
            "rejected", False, "desired_already_answered")
        assert desired_row(d1) == [("applied", m1)]
        # ... while the original answer, sent again, is a replay
        a = send(relay, m1, True, desired_id=d1)
        assert a["status"] == "replayed"

        # local changes (no desired_id)
        m = _mid()
        a = send(relay, m, False, report_status="applied")
        assert (a["status"], a["retryable"], a["error"]["type"]) == (
            "rejected", False, "invalid_report_status")
        for extra in ({"report_status": "reported"}, {}):
            m = _mid()
            a = send(relay, m, False, **extra)
            assert (a["status"], a.get("error")) == ("accepted", None), (extra, a)
            assert "desired_id" not in a

        # desired_id on a sensor route
        m = _mid()
        a = send(routes["temperature"]["feed_data_topic"], m, 21.0, desired_id=d3)
        assert (a["status"], a["retryable"], a["error"]["type"]) == (
            "rejected", False, "not_a_command_route")
        assert desired_row(d3) == [(None, None)]
    finally:
        _close(dev)


# --- 8. feed-data validation --------------------------------------------------

AT = "2026-11-21T21:00:00.000Z"


def _json(**fields):
    return json.dumps(fields)


INVALID = [
    # id, payload (str, or a function of the catalog), expected error.type, text in the message
    ("not-json", "{not json", "invalid_json", None),
    ("not-utf8", b"\xff\xfe{}", "invalid_json", None),
    # NaN is not JSON (RFC 8259): the service rejects the literal as such.
    ("nan-literal", '{"message_id": "%(mid)s", "value": NaN, "value_received_at": "%(at)s"}',
     "invalid_json", None),
    ("array", '[{"message_id": "%(mid)s", "value": 1, "value_received_at": "%(at)s"}]',
     "invalid_payload", None),
    ("string-payload", '"just a string"', "invalid_payload", None),
    ("no-message_id", _json(value=20.0, value_received_at=AT), "missing_field", "message_id"),
    ("no-value", '{"message_id": "%(mid)s", "value_received_at": "%(at)s"}', "missing_field", "value"),
    ("no-value_received_at", '{"message_id": "%(mid)s", "value": 20.0}', "missing_field",
     "value_received_at"),
    ("int-message_id", _json(message_id=12345, value=20.0, value_received_at=AT),
     "invalid_message_id", None),
    ("long-message_id", _json(message_id="m" * 65, value=20.0, value_received_at=AT),
     "invalid_message_id", None),
    ("bad-chars-message_id", _json(message_id="bad id/#", value=20.0, value_received_at=AT),
     "invalid_message_id", None),
    ("empty-message_id", _json(message_id="", value=20.0, value_received_at=AT),
     "invalid_message_id", None),
    ("timestamp-no-zone", '{"message_id": "%(mid)s", "value": 20.0, "value_received_at":'
     ' "2026-11-21T21:00:00.000"}', "invalid_timestamp", None),
    ("timestamp-garbage", '{"message_id": "%(mid)s", "value": 20.0, "value_received_at": "yesterday"}',
     "invalid_timestamp", None),
    ("timestamp-number", '{"message_id": "%(mid)s", "value": 20.0, "value_received_at": 1763758800}',
     "invalid_timestamp", None),
    ("timestamp-future", '{"message_id": "%(mid)s", "value": 20.0, "value_received_at":'
     ' "2099-01-01T00:00:00Z"}', "timestamp_in_future", None),
    ("value-string", '{"message_id": "%(mid)s", "value": "20.0", "value_received_at": "%(at)s"}',
     "invalid_value_type", None),
    ("value-bool", '{"message_id": "%(mid)s", "value": true, "value_received_at": "%(at)s"}',
     "invalid_value_type", None),
    ("value-overflows-to-inf", '{"message_id": "%(mid)s", "value": 1e999, "value_received_at": "%(at)s"}',
     "invalid_value_type", None),
    ("value-null", '{"message_id": "%(mid)s", "value": null, "value_received_at": "%(at)s"}',
     "invalid_value_type", None),
    ("value-too-high", '{"message_id": "%(mid)s", "value": 125.5, "value_received_at": "%(at)s"}',
     "value_out_of_range", None),
    ("value-too-low", '{"message_id": "%(mid)s", "value": -41, "value_received_at": "%(at)s"}',
     "value_out_of_range", None),
    ("version-2", '{"version": 2, "message_id": "%(mid)s", "value": 20.0, "value_received_at": "%(at)s"}',
     "unsupported_version", None),
    ("too-large", lambda limit, mid: json.dumps(
        {"message_id": mid, "value": 20.0, "value_received_at": AT, "pad": "x" * limit}),
     "payload_too_large", None),
]


@pytest.mark.parametrize("payload,etype,mentions", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_feed_data_is_rejected(cloud, payload, etype, mentions):
    _, catalog, cred = cloud.bootstrap()
    limit = catalog["limits"]["max_payload_bytes"]
    ack_topic = catalog["mqtt"]["feed_data_ack_topic"]
    topic = _routes(catalog)["temperature"]["feed_data_topic"]
    mid = _mid()
    if callable(payload):
        payload = payload(limit, mid)
        assert len(payload.encode()) > limit
    elif isinstance(payload, str):
        payload = payload % {"mid": mid, "at": AT} if "%(" in payload else payload
    dev = _device(cloud, cred)
    try:
        assert dev.subscribe(ack_topic) == 1
        dev.publish(topic, payload)
        a = _ack(dev, ack_topic)   # a fresh session: the only ack is ours
    finally:
        _close(dev)
    assert (a["status"], a["retryable"], a["version"]) == ("rejected", False, 1), a
    assert a["error"]["type"] == etype, a
    assert a["error"]["message"]
    if mentions:
        assert mentions in a["error"]["message"]
    if a.get("message_id") is not None:
        assert a["message_id"] == mid
    assert isinstance(a["sequence_number"], int)
    # Nothing took effect, and the ledger recorded the same decision.
    rows = cloud.ledger("SELECT status, error_type FROM received WHERE device_id=? AND sequence_number=?",
                        (cloud.client(0)[2], a["sequence_number"]))
    assert rows == [("rejected", etype)]
    assert cloud.ledger("SELECT COUNT(*) FROM effects WHERE message_id=?", (mid,)) == [(0,)]
