"""Contract: every fault knob of the local Realer cloud does what faults.py promises.

HTTPS knobs on token/catalog/credentials/revoke, the ack service's silent/error
knobs, broker restarts, and the CLI that drives them.
"""
import json
import os
import queue
import ssl
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from realer_harness import ROOT, feed, mosquitto_pids

pytestmark = pytest.mark.fault

ENDPOINTS = ("token", "catalog", "credentials", "revoke")


def _mid():
    return "f-" + uuid.uuid4().hex[:20]


def cli(cloud, *args, check=True):
    """Run `python -m tools.realer --state <state> ARGS` from the repo root."""
    p = subprocess.run([sys.executable, "-m", "tools.realer", "--state", cloud.state, *args],
                       cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p


class Caller:
    """One ordinary request per endpoint, prepared before any fault is set."""

    def __init__(self, cloud):
        self.cloud = cloud
        self.cid, self.secret, self.device_id = cloud.client()
        self.tok = cloud.token()

    def request(self, endpoint, client=None):
        c = client or self.cloud.api
        hdr = {"Authorization": "Bearer " + self.tok}
        if endpoint == "token":
            return c.post("/oauth/token", data={"grant_type": "client_credentials"},
                          auth=(self.cid, self.secret))
        if endpoint == "catalog":
            return c.get("/iot/v1/devices/%d/mqtt" % self.device_id, headers=hdr)
        if endpoint == "credentials":
            return c.post("/iot/v1/mqtt-credentials", json={"device_id": self.device_id}, headers=hdr)
        if endpoint == "revoke":
            # An unknown token is not an error (RFC 7009): an ordinary 200, empty body.
            return c.post("/oauth/revoke", data={"token": "unknown-" + uuid.uuid4().hex},
                          auth=(self.cid, self.secret))
        raise AssertionError(endpoint)

    @staticmethod
    def assert_normal(endpoint, r):
        if endpoint == "token":
            assert r.status_code == 200, r.text
            assert r.json()["token_type"] == "Bearer" and r.json()["access_token"]
        elif endpoint == "catalog":
            assert r.status_code == 200, r.text
            assert r.json()["code"] == 2000 and "mqtt" in r.json()
        elif endpoint == "credentials":
            assert r.status_code == 201, r.text
            assert r.json()["mqtt"]["mqtt_username"]
        elif endpoint == "revoke":
            assert r.status_code == 200, r.text
            assert r.content == b""
        assert "retry-after" not in r.headers


@pytest.fixture
def caller(cloud):
    return Caller(cloud)


def _faults(cloud):
    return cloud.admin("GET", "/admin/status")["faults"]


# --- HTTPS knobs ------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_status_with_retry_after(cloud, caller, endpoint):
    caller.assert_normal(endpoint, caller.request(endpoint))
    cloud.fault(endpoint, status=503, retry_after=7)
    for _ in range(2):  # without `times` the fault stays until cleared
        r = caller.request(endpoint)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        body = r.json()
        assert body["error"] == "server_error" and body["error_description"]
    cloud.fault(endpoint, status=429)
    r = caller.request(endpoint)
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert r.json()["error"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_times_then_normal(cloud, caller, endpoint):
    cloud.fault(endpoint, status=503, times=2)
    assert [caller.request(endpoint).status_code for _ in range(2)] == [503, 503]
    caller.assert_normal(endpoint, caller.request(endpoint))
    caller.assert_normal(endpoint, caller.request(endpoint))
    assert endpoint not in _faults(cloud)["http"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_delay_answers_normally_later(cloud, caller, endpoint):
    cloud.fault(endpoint, delay=1.0)
    t0 = time.monotonic()
    r = caller.request(endpoint)
    took = time.monotonic() - t0
    assert took >= 1.0
    caller.assert_normal(endpoint, r)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_stall_times_out_while_server_serves_others(cloud, caller, endpoint):
    cloud.fault(endpoint, stall=True, times=1)
    before = _faults(cloud)["hits"][endpoint]
    outcome = queue.Queue()
    slow = httpx.Client(base_url=cloud.info["api_url"], verify=ssl.create_default_context(cafile=cloud.ca),
                        timeout=httpx.Timeout(5.0, read=1.5))

    def stalled():
        try:
            outcome.put(caller.request(endpoint, slow))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome.put(exc)
    t = threading.Thread(target=stalled, daemon=True)
    try:
        t.start()
        deadline = time.monotonic() + 10
        while _faults(cloud)["hits"][endpoint] == before:  # the stalled request took the fault
            assert time.monotonic() < deadline, "the stalled request never reached the server"
            time.sleep(0.02)
        # Meanwhile, the server answers other requests, on the same endpoint and others.
        caller.assert_normal(endpoint, caller.request(endpoint))
        other = [e for e in ENDPOINTS if e != endpoint][0]
        caller.assert_normal(other, caller.request(other))
        assert outcome.empty(), "the stalled request was answered"
        got = outcome.get(timeout=15)
        assert isinstance(got, httpx.ReadTimeout), got
    finally:
        slow.close()
        t.join(15)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_garbage_is_not_json(cloud, caller, endpoint):
    cloud.fault(endpoint, garbage=True)
    r = caller.request(endpoint)
    assert r.status_code == 200
    assert r.content
    with pytest.raises(ValueError):
        json.loads(r.content)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_huge_is_big_valid_json(cloud, caller, endpoint):
    cloud.fault(endpoint, huge=200000)
    r = caller.request(endpoint)
    assert r.status_code == 200
    assert len(r.content) >= 200000
    assert isinstance(json.loads(r.content), dict)


@pytest.mark.parametrize("how", ["admin", "cli"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_clear_restores_normal_answers(cloud, caller, endpoint, how):
    cloud.fault(endpoint, status=500)
    assert caller.request(endpoint).status_code == 500
    if how == "admin":
        cloud.clear_faults()
    else:
        cli(cloud, "fault", "clear")
    assert _faults(cloud)["http"] == {}
    caller.assert_normal(endpoint, caller.request(endpoint))


def test_cli_sets_http_fault(cloud, caller):
    out = json.loads(cli(cloud, "fault", "catalog", "--status", "503", "--retry-after", "5",
                         "--times", "1").stdout)
    assert out["http"]["catalog"] == {"status": 503, "retry_after": 5, "times": 1}
    r = caller.request("catalog")
    assert (r.status_code, r.headers.get("retry-after")) == (503, "5")
    caller.assert_normal("catalog", caller.request("catalog"))


@pytest.mark.parametrize("body", [
    {"target": "oauth"},                       # unknown endpoint
    {"target": "tokens", "status": 503},       # unknown endpoint
    {"target": "token", "statuss": 503},       # unknown knob
    {"target": "catalog", "status": 999},      # not an HTTP status
    {"target": "revoke", "status": 99},
    {"target": "credentials", "delay": "soon"},
    {"target": "token", "huge": True},         # a boolean is not a number
    {"target": "token"},                       # no knob at all
])
def test_bad_knobs_are_refused(cloud, caller, body):
    out = cloud.admin("POST", "/admin/faults", body, expect=400)
    assert out["error"] == "invalid_request" and out["error_description"]
    assert _faults(cloud)["http"] == {}
    caller.assert_normal("token", caller.request("token"))


def test_cli_bad_knob_fails(cloud):
    p = cli(cloud, "fault", "token", "--status", "999", check=False)
    assert p.returncode != 0
    assert "status" in p.stderr
    assert _faults(cloud)["http"] == {}


# --- the ack service ------------------------------------------------------

def _session(cloud):
    _, catalog, cred = cloud.bootstrap()
    dev = cloud.mqtt(cred)
    ack_topic = catalog["mqtt"]["feed_data_ack_topic"]
    assert dev.subscribe(ack_topic) == 1
    routes = {r["name"]: r["mqtt"]["feed_data_topic"] for r in catalog["mqtt_routes"]}
    return dev, ack_topic, routes, cred


def _no_message(dev, topic, timeout):
    try:
        got = dev.next_message(topic, timeout)
    except (TimeoutError, queue.Empty):
        return
    raise AssertionError("unexpected message: %r" % (got,))


@pytest.mark.parametrize("resume", ["silent_false", "clear", "cli_resume"])
def test_ack_silent_queues_then_drains_in_order(cloud, resume):
    dev, ack_topic, routes, _ = _session(cloud)
    try:
        out = cloud.fault("ack", silent=True)
        assert out["ack_silent"] is True
        assert cloud.admin("GET", "/admin/status")["ack_silent"] is True
        mids = [_mid() for _ in range(4)]
        for i, mid in enumerate(mids):
            dev.publish(routes["temperature"], feed(mid, 20.0 + i))
        _no_message(dev, ack_topic, 2)
        if resume == "silent_false":
            assert cloud.fault("ack", silent=False)["ack_silent"] is False
        elif resume == "clear":
            cloud.clear_faults()
        else:
            cli(cloud, "fault", "ack", "--resume")
        acks = [dev.next_json(ack_topic, timeout=15) for _ in mids]
        assert [a["message_id"] for a in acks] == mids
        assert [a["status"] for a in acks] == ["accepted"] * len(mids)
        assert cloud.admin("GET", "/admin/status")["ack_silent"] is False
        # And it keeps answering new data.
        mid = _mid()
        dev.publish(routes["temperature"], feed(mid, 25.0))
        a = dev.next_json(ack_topic, timeout=15)
        assert (a["message_id"], a["status"]) == (mid, "accepted")
    finally:
        cloud.fault("ack", silent=False)
        dev.close()


@pytest.mark.parametrize("how", ["admin", "cli"])
def test_ack_error_n_then_accepted(cloud, how):
    dev, ack_topic, routes, _ = _session(cloud)
    try:
        if how == "admin":
            assert cloud.fault("ack", error=2)["ack_errors"] == 2
        else:
            assert json.loads(cli(cloud, "fault", "ack", "--error", "2").stdout)["ack_errors"] == 2
        got = []
        for i in range(3):
            mid = _mid()
            dev.publish(routes["humidity"], feed(mid, 40.0 + i))
            a = dev.next_json(ack_topic, timeout=15)
            assert a["message_id"] == mid
            got.append((a["status"], a["retryable"], a.get("error", {}).get("type")))
        assert got == [("error", True, "internal_error"), ("error", True, "internal_error"),
                       ("accepted", False, None)]
        assert _faults(cloud)["ack_errors"] == 0
    finally:
        dev.close()


# --- broker restart ---------------------------------------------------------

def _feed_acked(dev, ack_topic, topic, timeout=20):
    mid = _mid()
    dev.publish(topic, feed(mid, 22.0), timeout=timeout)
    a = dev.next_json(ack_topic, timeout=timeout)
    assert (a["message_id"], a["status"]) == (mid, "accepted")


@pytest.mark.parametrize("how", ["admin", "cli"])
def test_broker_restart_kicks_devices_and_recovers(own_cloud, how):
    c = own_cloud()
    dev, ack_topic, routes, cred = _session(c)
    try:
        _feed_acked(dev, ack_topic, routes["temperature"])
        pid = _mosquitto_pid(c)
        if how == "admin":
            assert c.admin("POST", "/admin/broker/restart") == {"restarted": True}
        else:
            assert json.loads(cli(c, "broker-restart").stdout) == {"restarted": True}
        dev.disconnects.get(timeout=10)  # the device lost its connection
        assert _mosquitto_pid(c) != pid
        assert c.admin("GET", "/admin/status")["broker_running"] is True
    finally:
        dev.close()
    # The credential survived in the plugin's file, so the same tuple connects again.
    with open(os.path.join(c.state, "broker", "dynamic-security.json")) as f:
        assert cred["mqtt_username"] in {cl["username"] for cl in json.load(f)["clients"]}
    dev = c.mqtt(cred)
    try:
        assert dev.subscribe(ack_topic) == 1
        _feed_acked(dev, ack_topic, routes["temperature"])
        # New credentials can still be issued: the admin link reconnected too.
        _, _, cred2 = c.bootstrap()
        assert cred2["mqtt_username"] != cred["mqtt_username"]
    finally:
        dev.close()


def test_broker_survives_thread_pool_churn_after_restart(own_cloud):
    """mosquitto's parent-death signal must not follow an idle worker thread.

    PR_SET_PDEATHSIG fires when the *thread* that started the child exits. The
    restarted broker must keep running after the API's idle worker threads are
    pruned (anyio prunes workers idle for 10 s when a new job comes in).
    """
    c = own_cloud()
    c.admin("POST", "/admin/broker/restart")
    pid = _mosquitto_pid(c)
    tok = c.token()
    hdr = {"Authorization": "Bearer " + tok}
    body = {"device_id": c.client()[2]}

    def burst():
        # Concurrent requests that each need a worker thread: several workers exist after.
        threads = [threading.Thread(target=lambda: c.api.post("/iot/v1/mqtt-credentials", json=body,
                                                               headers=hdr)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    burst()
    time.sleep(10.5)
    burst()  # prunes the workers that were idle for 10 s
    time.sleep(1.0)
    assert c.admin("GET", "/admin/status")["broker_running"] is True
    assert _mosquitto_pid(c) == pid
    _, _, cred = c.bootstrap()
    dev = c.mqtt(cred)
    dev.close()


def _mosquitto_pid(cloud):
    pids = mosquitto_pids(cloud.state)
    return pids[0] if pids else None



# --- the CLI ----------------------------------------------------------------

def test_cli_desired_prints_sequence_number(cloud):
    _, catalog, cred = cloud.bootstrap()
    relay = [r for r in catalog["mqtt_routes"] if r["name"] == "relay"][0]["mqtt"]["desired_topic"]
    out = json.loads(cli(cloud, "desired", "relay", "true", "--valid-for", "30").stdout)
    assert isinstance(out["sequence_number"], int) and not isinstance(out["sequence_number"], bool)
    assert out["value"] is True and out["valid_for_seconds"] == 30
    assert out["desired_id"] and out["topic"] == relay
    out2 = json.loads(cli(cloud, "desired", "relay", "false", "--valid-for", "30").stdout)
    assert out2["sequence_number"] > out["sequence_number"]
    # The device sees the retained desired state that the CLI published.
    dev = cloud.mqtt(cred)
    try:
        assert dev.subscribe(relay) == 1
        got = dev.next_json(relay, timeout=10)
        assert (got["desired_id"], got["value"]) == (out2["desired_id"], False)
    finally:
        dev.close()


def test_cli_status(cloud):
    out = json.loads(cli(cloud, "status").stdout)
    assert out["broker_running"] is True
    assert out["pid"] == cloud.proc.pid
    assert out["ack_silent"] is False and out["faults"]["http"] == {}


def test_cli_without_running_cloud_fails(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tools.realer", "--state", str(tmp_path), "status"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "no running cloud" in p.stderr
