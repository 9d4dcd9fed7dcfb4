"""Contract: the local Realer cloud starts fast, stops cleanly, keeps its PKI, and TLS is strict."""
import os
import queue
import signal
import socket
import ssl
import sys
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from realer_harness import ROOT, RunningCloud, mosquitto_pids

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from tools.realer import pki  # noqa: E402


def wait_gone(state, timeout):
    deadline = time.monotonic() + timeout
    while mosquitto_pids(state):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_starts_fast_and_prints_the_demo_client(own_cloud):
    c = own_cloud()
    assert c.started_in < 5
    demo = c.info["demo"]
    out = "\n".join(c.output)
    assert str(demo["device_id"]) in out
    assert demo["client_id"] in out
    assert demo["client_secret"] and demo["client_secret"] in out
    assert c.ca in out and os.path.isfile(c.ca)
    assert c.ca.startswith(c.state)
    line = [ln for ln in c.output if "demo device" in ln][0]
    assert "device_id=%d" % demo["device_id"] in line
    assert "client_id=%s" % demo["client_id"] in line
    assert "client_secret=%s" % demo["client_secret"] in line
    c.token()  # and the printed client works


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stops_cleanly(own_cloud, sig):
    c = own_cloud()
    run_json = os.path.join(c.state, "run.json")
    assert os.path.exists(run_json)
    assert len(mosquitto_pids(c.state)) == 1
    assert c.stop(sig) == 0
    c.wait_for("realer: stopped", 10)
    assert not os.path.exists(run_json)
    assert mosquitto_pids(c.state) == []


def test_sigkill_takes_mosquitto_along(own_cloud):
    c = own_cloud()
    pids = mosquitto_pids(c.state)
    assert len(pids) == 1
    c.proc.kill()
    c.proc.wait(10)
    assert wait_gone(c.state, 5), "orphaned mosquitto %s" % mosquitto_pids(c.state)


def test_sigkill_after_broker_restart_takes_mosquitto_along(own_cloud):
    # The restarted mosquitto is started from another thread than the first one.
    c = own_cloud()
    old = mosquitto_pids(c.state)
    c.admin("POST", "/admin/broker/restart")
    new = mosquitto_pids(c.state)
    assert len(new) == 1 and new != old
    c.proc.kill()
    c.proc.wait(10)
    assert wait_gone(c.state, 5), "orphaned mosquitto %s" % mosquitto_pids(c.state)


def test_restart_reuses_ca_and_client_secret(tmp_path):
    state = tmp_path / "state"
    first = RunningCloud(state)
    try:
        with open(first.ca, "rb") as f:
            ca = f.read()
        secret = first.info["demo"]["client_secret"]
        tok = first.token()
    finally:
        assert first.stop() == 0
    second = RunningCloud(state)
    try:
        assert second.ca == first.ca
        with open(second.ca, "rb") as f:
            assert f.read() == ca
        assert second.info["demo"]["client_secret"] == secret
        assert any(secret in line for line in second.output)
        assert second.token() != tok  # the same secret still authenticates
        # A client that pinned the first run's CA trusts the second run's server.
        with httpx.Client(verify=ssl.create_default_context(cadata=ca.decode()), timeout=15) as h:
            r = h.get(second.info["api_url"] + "/admin/status",
                      headers={"Authorization": "Bearer " + second.info["admin_token"]})
            assert r.status_code == 200 and r.json()["broker_running"] is True
    finally:
        assert second.stop() == 0


def test_two_clouds_side_by_side(own_cloud):
    a, b = own_cloud(), own_cloud()
    assert a.state != b.state
    assert {a.http_port, a.mqtt_port}.isdisjoint({b.http_port, b.mqtt_port})
    for c in (a, b):
        st = c.admin("GET", "/admin/status")
        assert st["pid"] == c.proc.pid and st["broker_running"] is True
        _, _, cred = c.bootstrap()
        dev = c.mqtt(cred)
        dev.close()
    with open(a.ca, "rb") as fa, open(b.ca, "rb") as fb:
        assert fa.read() != fb.read()


# --- a client must refuse a server it cannot verify ---------------------------

@pytest.fixture
def wrong_ca(tmp_path):
    _, cert = pki.make_ca("some other CA")
    path = tmp_path / "wrong-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_https_with_wrong_ca_is_refused(cloud, wrong_ca):
    url = cloud.info["api_url"] + "/oauth/token"
    with httpx.Client(verify=ssl.create_default_context(cafile=cloud.ca), timeout=15) as good:
        assert good.post(url, data={"grant_type": "client_credentials"}).status_code == 401
    with httpx.Client(verify=ssl.create_default_context(cafile=wrong_ca), timeout=15) as bad:
        with pytest.raises(httpx.ConnectError) as e:
            bad.post(url, data={"grant_type": "client_credentials"})
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


def test_mqtt_with_wrong_ca_is_refused(cloud, wrong_ca):
    _, _, cred = cloud.bootstrap()
    good = cloud.mqtt(cred)  # the same tuple with the right CA connects
    good.close()
    bad = cloud.mqtt(cred, ca=wrong_ca, connect=False)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            bad.client.connect("localhost", cloud.mqtt_port, keepalive=30)
    finally:
        bad.client.loop_stop()


def test_mqtt_loop_with_wrong_ca_never_gets_connack(cloud, wrong_ca):
    # connect_async: the handshake fails inside paho's loop; no CONNACK arrives.
    _, _, cred = cloud.bootstrap()
    dev = cloud.mqtt(cred, ca=wrong_ca, connect=False)
    try:
        dev.client.connect_async("localhost", cloud.mqtt_port, keepalive=30)
        dev.client.loop_start()
        with pytest.raises(queue.Empty):
            dev.connack.get(timeout=3)
        assert not dev.client.is_connected()
    finally:
        dev.client.disconnect()
        dev.client.loop_stop()


@pytest.mark.parametrize("port", ["mqtt_port", "http_port"])
def test_hostname_mismatch_is_refused(cloud, port):
    ctx = ssl.create_default_context(cafile=cloud.ca)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    p = getattr(cloud, port)
    for name in ("localhost", "127.0.0.1"):  # the names the certificate is for
        with socket.create_connection(("127.0.0.1", p), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version()
    with socket.create_connection(("127.0.0.1", p), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError) as e:
            ctx.wrap_socket(raw, server_hostname="example.com")
    assert "hostname" in str(e.value).lower()

