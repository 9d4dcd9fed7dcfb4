"""firmware.net.http against the real local Realer cloud (CPython, verified TLS)."""
import asyncio
import ssl
import time

import pytest
from cryptography.hazmat.primitives import serialization

from firmware.net import http, tls
from realer_harness import ALL_SCOPES
from tools.realer.pki import make_ca


def ctx_for(cloud):
    with open(cloud.info["ca_der"], "rb") as f:
        return tls.context(f.read())


def call(*args, **kw):
    return asyncio.run(http.request(*args, **kw))


def get_token(cloud, ctx, index=0, **kw):
    cid, secret, _ = cloud.client(index)
    form = http.form_encode([("grant_type", "client_credentials"), ("scope", ALL_SCOPES)])
    return call("POST", cloud.info["api_url"] + "/oauth/token", ctx,
                {"Authorization": http.basic_auth(cid, secret),
                 "Content-Type": "application/x-www-form-urlencoded"}, form, **kw)


def test_token_catalog_credential_revoke(cloud):
    ctx = ctx_for(cloud)
    r = get_token(cloud, ctx)
    assert r.status == 200, r.body
    assert r.header("content-type").startswith("application/json")
    tok = r.json()["access_token"]
    assert r.json()["token_type"] == "Bearer"

    api, device_id = cloud.info["api_url"], cloud.client(0)[2]
    auth = {"Authorization": "Bearer " + tok}
    r = call("GET", "%s/iot/v1/devices/%d/mqtt" % (api, device_id), ctx, auth)
    assert r.status == 200, r.body
    catalog = r.json()
    assert catalog["mqtt"]["broker_url"].startswith("mqtts://")

    r = call("POST", api + "/iot/v1/mqtt-credentials", ctx, auth,
             catalog["mqtt"]["credential_endpoint"]["body"])
    assert r.status == 201, r.body
    assert r.json()["mqtt"]["mqtt_username"]

    cid, secret, _ = cloud.client(0)
    r = call("POST", api + "/oauth/revoke", ctx,
             {"Authorization": http.basic_auth(cid, secret),
              "Content-Type": "application/x-www-form-urlencoded"}, http.form_encode({"token": tok}))
    assert r.status in (200, 204), r.body
    r = call("GET", "%s/iot/v1/devices/%d/mqtt" % (api, device_id), ctx, auth)
    assert r.status == 401 and r.json()["error"] == "invalid_token"


def test_wrong_client_secret_is_401(cloud):
    cid = cloud.client(0)[0]
    r = call("POST", cloud.info["api_url"] + "/oauth/token", ctx_for(cloud),
             {"Authorization": http.basic_auth(cid, "wrong secret"),
              "Content-Type": "application/x-www-form-urlencoded"},
             http.form_encode({"grant_type": "client_credentials"}))
    assert r.status == 401 and r.json()["error"] == "invalid_client"


def test_wrong_ca_is_refused(cloud):
    _, cert = make_ca("not the Realer CA")
    ctx = tls.context(cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ssl.SSLError) as e:
        get_token(cloud, ctx)
    assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)


def test_plain_http_url_refused(cloud):
    url = cloud.info["api_url"].replace("https://", "http://") + "/oauth/token"
    with pytest.raises(ValueError, match="only https"):
        call("POST", url, ctx_for(cloud), body="grant_type=client_credentials")


def test_huge_body_is_refused(cloud):
    ctx = ctx_for(cloud)
    tok = get_token(cloud, ctx).json()["access_token"]
    cloud.fault("catalog", huge=200000)
    with pytest.raises(http.HTTPError, match="16384"):
        call("GET", "%s/iot/v1/devices/%d/mqtt" % (cloud.info["api_url"], cloud.client(0)[2]),
             ctx, {"Authorization": "Bearer " + tok}, max_body=16384)


def test_stalled_token_times_out(cloud):
    cloud.fault("token", stall=True)
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        get_token(cloud, ctx_for(cloud), timeout_ms=1500)
    took = time.monotonic() - t0
    assert e.value.errno == 110 and "timeout" in str(e.value)
    assert not isinstance(e.value, http.HTTPError)
    assert 1.4 <= took < 3, took
