"""Contract: the full bootstrap and the five ack statuses, over HTTPS and MQTT/TLS."""
import uuid

from realer_harness import feed


def _mid():
    return "t-" + uuid.uuid4().hex[:16]


def test_bootstrap_returns_seed_001_fields(cloud):
    tok, catalog, cred = cloud.bootstrap()
    m = catalog["mqtt"]
    assert catalog["code"] == 2000
    assert m["broker_url"] == "mqtts://localhost:%d" % cloud.mqtt_port
    for key in ("protocol", "client_id", "qos", "retain_policy", "feed_data_ack_topic",
                "credential_endpoint"):
        assert key in m
    assert m["qos"] == 1 and m["retain_policy"] == "disabled"
    assert m["credential_endpoint"]["endpoint"] == "/iot/v1/mqtt-credentials"
    assert m["credential_endpoint"]["body"]["device_id"] == cloud.client()[2]
    kinds = {r["source_type"] for r in catalog["mqtt_routes"]}
    assert kinds == {"sensor", "command"}
    for r in catalog["mqtt_routes"]:
        assert r["mqtt"]["feed_data_topic"].endswith("/feed-data")
        assert ("desired_topic" in r["mqtt"]) == (r["source_type"] == "command")
    assert catalog["limits"]["max_payload_bytes"] > 0
    assert catalog["credential_lifecycle"]["renew_after"] < catalog["credential_lifecycle"]["expires_in"]
    assert cred["mqtt_client_id"] == m["client_id"]
    assert cred["mqtt_username"] and cred["mqtt_credential"]
    assert "iot:mqtt:connect" in cred["scopes"]
    assert 0 < cred["renew_after"] < cred["expires_in"] <= cred["session_hard_expires_in"]
    dev = cloud.mqtt(cred)
    try:
        assert dev.subscribe(m["feed_data_ack_topic"]) == 1
        for r in catalog["mqtt_routes"]:
            if "desired_topic" in r["mqtt"]:
                assert dev.subscribe(r["mqtt"]["desired_topic"]) == 1
    finally:
        dev.close()


def _session(cloud):
    tok, catalog, cred = cloud.bootstrap()
    dev = cloud.mqtt(cred)
    ack_topic = catalog["mqtt"]["feed_data_ack_topic"]
    assert dev.subscribe(ack_topic) == 1
    routes = {r["name"]: r for r in catalog["mqtt_routes"]}
    return dev, ack_topic, routes


def test_accepted_replayed_conflict_rejected_error(cloud):
    dev, ack_topic, routes = _session(cloud)
    topic = routes["temperature"]["mqtt"]["feed_data_topic"]
    mid = _mid()
    try:
        dev.publish(topic, feed(mid, 21.5))
        a = dev.next_json(ack_topic)
        assert (a["status"], a["retryable"], a["message_id"], a["version"]) == ("accepted", False, mid, 1)
        assert isinstance(a["sequence_number"], int) and "error" not in a

        dev.publish(topic, feed(mid, 21.5))
        b = dev.next_json(ack_topic)
        assert (b["status"], b["retryable"], b["message_id"]) == ("replayed", False, mid)
        assert b["sequence_number"] > a["sequence_number"]

        dev.publish(topic, feed(mid, 30.0))
        c = dev.next_json(ack_topic)
        assert (c["status"], c["retryable"], c["error"]["type"]) == ("conflict", False, "message_id_conflict")

        bad = _mid()
        dev.publish(topic, feed(bad, "hot"))
        d = dev.next_json(ack_topic)
        assert (d["status"], d["retryable"], d["message_id"]) == ("rejected", False, bad)
        assert d["error"]["type"] == "invalid_value_type" and d["error"]["message"]

        cloud.fault("ack", error=1)
        flaky = _mid()
        dev.publish(topic, feed(flaky, 19.0))
        e = dev.next_json(ack_topic)
        assert (e["status"], e["retryable"], e["error"]["type"]) == ("error", True, "internal_error")
        dev.publish(topic, feed(flaky, 19.0))  # the retry, same message_id
        f = dev.next_json(ack_topic)
        assert f["status"] == "accepted"
    finally:
        dev.close()
    # The ledger: one effect per message_id that took effect, none for the others.
    effects = dict(cloud.ledger("SELECT message_id, value FROM effects WHERE message_id IN (?,?,?)",
                                (mid, bad, flaky)))
    assert effects == {mid: "21.5", flaky: "19.0"}
    statuses = [r[0] for r in cloud.ledger("SELECT status FROM received WHERE message_id=? ORDER BY id", (mid,))]
    assert statuses == ["accepted", "replayed", "conflict"]
