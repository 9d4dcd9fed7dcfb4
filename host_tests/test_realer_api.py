"""Contract: the HTTPS endpoints of the local Realer cloud with bad and good input.

Every error is checked for its exact status, its RFC 6749 / 6750 / 7009 error code
in a JSON body (with an error_description), and the headers those RFCs require.
"""
import base64
import concurrent.futures

import pytest

from realer_harness import ALL_SCOPES

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GRANT = {"grant_type": "client_credentials"}
OVERSIZE = "x" * 9000  # > MAX_BODY (8192)


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _basic(cid, secret):
    return {"Authorization": "Basic " + _b64("%s:%s" % (cid, secret))}


def _bearer(tok):
    return {"Authorization": "Bearer " + tok}


def _err(r, status, error):
    """Assert an error response: status, JSON content type, error and error_description."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].split(";")[0] == "application/json", r.headers
    body = r.json()
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str) and body["error_description"], body
    return body


def _catalog_path(device_id):
    return "/iot/v1/devices/%s/mqtt" % device_id


def _cred_count(cloud, device_id):
    return cloud.ledger("SELECT COUNT(*) FROM credentials WHERE device_id=?", (device_id,))[0][0]


def _token_count(cloud):
    return cloud.ledger("SELECT COUNT(*) FROM tokens")[0][0]


# --- POST /oauth/token -------------------------------------------------------

def _check_token_response(r, scopes):
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    body = r.json()
    assert isinstance(body["access_token"], str) and len(body["access_token"]) >= 16
    assert body["token_type"] == "Bearer"
    assert type(body["expires_in"]) is int and body["expires_in"] > 0
    assert body["scope"].split() == scopes.split()
    return body


def test_token_basic_auth(cloud):
    cid, secret, _ = cloud.client(0)
    r = cloud.api.post("/oauth/token", data=dict(GRANT, scope=ALL_SCOPES), auth=(cid, secret))
    body = _check_token_response(r, ALL_SCOPES)
    # The token works on the device's own catalog.
    r = cloud.api.get(_catalog_path(cloud.client(0)[2]), headers=_bearer(body["access_token"]))
    assert r.status_code == 200, r.text


def test_token_form_field_auth(cloud):
    cid, secret, _ = cloud.client(1)
    r = cloud.api.post("/oauth/token", data=dict(GRANT, client_id=cid, client_secret=secret,
                                                 scope="iot:catalog:read iot:mqtt:connect"))
    body = _check_token_response(r, "iot:catalog:read iot:mqtt:connect")
    r = cloud.api.get(_catalog_path(cloud.client(1)[2]), headers=_bearer(body["access_token"]))
    assert r.status_code == 200, r.text


def test_token_basic_plus_matching_form_client_id_is_one_method(cloud):
    # client_id in the body is not a second authentication method (RFC 6749 2.3.1).
    cid, secret, _ = cloud.client(0)
    r = cloud.api.post("/oauth/token", data=dict(GRANT, client_id=cid), auth=(cid, secret))
    _check_token_response(r, ALL_SCOPES)


@pytest.mark.parametrize("scope_param", [None, ""], ids=["omitted", "empty"])
def test_token_default_scopes(cloud, scope_param):
    # RFC 6749 3.2: a parameter sent without a value is treated as omitted.
    cid, secret, _ = cloud.client(0)
    data = dict(GRANT) if scope_param is None else dict(GRANT, scope=scope_param)
    r = cloud.api.post("/oauth/token", data=data, auth=(cid, secret))
    _check_token_response(r, ALL_SCOPES)


def test_token_duplicate_scopes_collapse(cloud):
    cid, secret, _ = cloud.client(0)
    r = cloud.api.post("/oauth/token", data=dict(GRANT, scope="iot:catalog:read iot:catalog:read"),
                       auth=(cid, secret))
    _check_token_response(r, "iot:catalog:read")


def _token_bad_cases():
    """(id, request kwargs from (cid, secret), status, error)."""
    def basic(**kw):
        return lambda c, s: dict(kw, auth=(c, s))
    return [
        ("missing_grant_type", basic(data={"scope": "iot:catalog:read"}), 400, "invalid_request"),
        ("empty_grant_type", basic(data={"grant_type": ""}), 400, "invalid_request"),
        ("unknown_grant", basic(data={"grant_type": "password", "username": "u", "password": "p"}),
         400, "unsupported_grant_type"),
        ("refresh_grant", basic(data={"grant_type": "refresh_token", "refresh_token": "x"}),
         400, "unsupported_grant_type"),
        ("wrong_secret", lambda c, s: dict(data=GRANT, auth=(c, s + "x")), 401, "invalid_client"),
        ("empty_secret", lambda c, s: dict(data=GRANT, auth=(c, "")), 401, "invalid_client"),
        ("unknown_client", lambda c, s: dict(data=GRANT, auth=("no-such-client", s)), 401,
         "invalid_client"),
        ("form_wrong_secret", lambda c, s: dict(data=dict(GRANT, client_id=c, client_secret=s[:-1])),
         401, "invalid_client"),
        ("form_unknown_client", lambda c, s: dict(data=dict(GRANT, client_id="nobody", client_secret=s)),
         401, "invalid_client"),
        ("form_no_secret", lambda c, s: dict(data=dict(GRANT, client_id=c)), 401, "invalid_client"),
        ("no_client_auth", lambda c, s: dict(data=GRANT), 401, "invalid_client"),
        ("basic_not_base64", lambda c, s: dict(data=GRANT, headers={"Authorization": "Basic !!not*base64!!"}),
         401, "invalid_client"),
        ("basic_no_colon", lambda c, s: dict(data=GRANT, headers={"Authorization": "Basic " + _b64(c + s)}),
         401, "invalid_client"),
        ("basic_empty", lambda c, s: dict(data=GRANT, headers={"Authorization": "Basic"}),
         401, "invalid_client"),
        ("wrong_scheme", lambda c, s: dict(data=GRANT, headers={"Authorization": "Bearer " + _b64("%s:%s" % (c, s))}),
         401, "invalid_client"),
        ("basic_and_form_secret", basic(data=dict(GRANT, client_secret="whatever")), 400, "invalid_request"),
        ("basic_and_other_form_client_id", basic(data=dict(GRANT, client_id="neighbour-gateway")),
         400, "invalid_request"),
        ("json_body", lambda c, s: dict(json=GRANT, auth=(c, s)), 400, "invalid_request"),
        ("no_content_type", lambda c, s: dict(content=b"grant_type=client_credentials", auth=(c, s)),
         400, "invalid_request"),
        ("multipart", lambda c, s: dict(files={"grant_type": (None, "client_credentials")}, auth=(c, s)),
         400, "invalid_request"),
        ("malformed_form", lambda c, s: dict(content=b"grant_type", headers=dict(FORM, **_basic(c, s))),
         400, "invalid_request"),
        ("not_utf8_form", lambda c, s: dict(content=b"grant_type=\xff\xfe", headers=dict(FORM, **_basic(c, s))),
         400, "invalid_request"),
        ("oversized", basic(data=dict(GRANT, pad=OVERSIZE)), 413, "invalid_request"),
        ("oversized_chunked", lambda c, s: dict(
            content=iter([b"grant_type=client_credentials&pad="] + [b"x" * 1024] * 9),
            headers=dict(FORM, **_basic(c, s))), 413, "invalid_request"),
        ("unknown_scope", basic(data=dict(GRANT, scope="iot:admin:write")), 400, "invalid_scope"),
        ("one_scope_not_allowed", basic(data=dict(GRANT, scope="iot:catalog:read iot:catalog:write")),
         400, "invalid_scope"),
        ("blank_scope", basic(data=dict(GRANT, scope="   ")), 400, "invalid_scope"),
        ("duplicated_grant_type", lambda c, s: dict(
            content=b"grant_type=client_credentials&grant_type=client_credentials",
            headers=dict(FORM, **_basic(c, s))), 400, "invalid_request"),
        ("duplicated_scope_param", lambda c, s: dict(
            content=b"grant_type=client_credentials&scope=iot%3Acatalog%3Aread&scope=iot%3Amqtt%3Aconnect",
            headers=dict(FORM, **_basic(c, s))), 400, "invalid_request"),
        ("duplicated_client_id", lambda c, s: dict(
            content=("grant_type=client_credentials&client_id=%s&client_id=%s&client_secret=%s"
                     % (c, c, s)).encode(), headers=FORM), 400, "invalid_request"),
    ]


TOKEN_BAD = _token_bad_cases()


@pytest.mark.parametrize("make,status,error", [c[1:] for c in TOKEN_BAD], ids=[c[0] for c in TOKEN_BAD])
def test_token_rejects(cloud, make, status, error):
    cid, secret, _ = cloud.client(0)
    issued = _token_count(cloud)
    r = cloud.api.post("/oauth/token", **make(cid, secret))
    body = _err(r, status, error)
    assert "access_token" not in body
    if status == 401:
        # RFC 6749 5.2: invalid_client with 401 names the supported scheme.
        assert r.headers["www-authenticate"].startswith("Basic "), r.headers
    assert _token_count(cloud) == issued  # nothing was issued


# --- GET /iot/v1/devices/{id}/mqtt -------------------------------------------

def test_catalog_without_authorization(cloud):
    r = cloud.api.get(_catalog_path(cloud.client(0)[2]))
    _err(r, 401, "invalid_token")
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    # RFC 6750 3.1: no error attribute when the request carried no credentials.
    assert "error=" not in challenge


@pytest.mark.parametrize("auth", [
    "Bearer not-a-real-token",
    "Bearer",
    "bearer garbage.garbage.garbage",
    "Basic " + _b64("demo-gateway:x"),
    "Token abc",
], ids=["garbage", "scheme_only", "lowercase_garbage", "basic_scheme", "other_scheme"])
def test_catalog_bad_token(cloud, auth):
    r = cloud.api.get(_catalog_path(cloud.client(0)[2]), headers={"Authorization": auth})
    _err(r, 401, "invalid_token")
    assert r.headers["www-authenticate"].startswith("Bearer ")


def test_catalog_garbage_token_challenge_names_error(cloud):
    r = cloud.api.get(_catalog_path(cloud.client(0)[2]), headers=_bearer("x" * 32))
    _err(r, 401, "invalid_token")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_catalog_needs_catalog_scope(cloud):
    tok = cloud.token(0, scope="iot:mqtt:connect")
    r = cloud.api.get(_catalog_path(cloud.client(0)[2]), headers=_bearer(tok))
    _err(r, 403, "insufficient_scope")
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="iot:catalog:read"' in challenge


@pytest.mark.parametrize("reader,target", [(0, 1), (1, 0)], ids=["demo_reads_neighbour", "neighbour_reads_demo"])
def test_catalog_other_device(cloud, reader, target):
    tok = cloud.token(reader)
    r = cloud.api.get(_catalog_path(cloud.client(target)[2]), headers=_bearer(tok))
    body = _err(r, 403, "access_denied")
    assert "mqtt" not in body


@pytest.mark.parametrize("device_id", [
    "abc", "12345abc", "-12345", "+12345", "12345.0", "1e5", "0x3039", "1" * 19,
    "%C2%B2",                                # superscript two: str.isdigit() but not an integer
    "%D9%A1%D9%A2%D9%A3%D9%A4%D9%A5",        # Arabic-Indic digits for 12345
    "%2012345",
])
def test_catalog_non_integer_device_id(cloud, device_id):
    tok = cloud.token(0)
    r = cloud.api.get(_catalog_path(device_id), headers=_bearer(tok))
    _err(r, 400, "invalid_request")


def test_catalog_unknown_device_is_forbidden(cloud):
    tok = cloud.token(0)
    r = cloud.api.get(_catalog_path(99999), headers=_bearer(tok))
    _err(r, 403, "access_denied")


def test_catalog_revoked_token(cloud):
    cid, secret, device_id = cloud.client(0)
    tok = cloud.token(0)
    assert cloud.api.get(_catalog_path(device_id), headers=_bearer(tok)).status_code == 200
    r = cloud.api.post("/oauth/revoke", data={"token": tok}, auth=(cid, secret))
    assert r.status_code == 200, r.text
    r = cloud.api.get(_catalog_path(device_id), headers=_bearer(tok))
    _err(r, 401, "invalid_token")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


# --- POST /iot/v1/mqtt-credentials -------------------------------------------

CRED_FIELDS = ("mqtt_client_id", "mqtt_username", "mqtt_credential", "scopes", "expires_in",
               "renew_after", "session_hard_expires_in")


def _cred(cloud, tok, body=None, **kw):
    if body is not None:
        kw["json"] = body
    return cloud.api.post("/iot/v1/mqtt-credentials", headers=dict(_bearer(tok), **kw.pop("headers", {})), **kw)


def test_credentials_issue_and_renew(cloud):
    tok = cloud.token(0)
    device_id = cloud.client(0)[2]
    catalog = cloud.api.get(_catalog_path(device_id), headers=_bearer(tok)).json()
    request = catalog["mqtt"]["credential_endpoint"]["body"]
    first = _cred(cloud, tok, request)
    assert first.status_code == 201, first.text
    assert first.headers["cache-control"] == "no-store"
    assert first.headers["pragma"] == "no-cache"
    a = first.json()["mqtt"]
    for key in CRED_FIELDS:
        assert key in a, (key, a)
    assert a["mqtt_client_id"] == catalog["mqtt"]["client_id"]
    assert a["scopes"] == request["scopes"]
    for key in ("expires_in", "renew_after", "session_hard_expires_in"):
        assert type(a[key]) is int
    assert 0 < a["renew_after"] < a["expires_in"] <= a["session_hard_expires_in"]
    assert a["mqtt_credential"] != tok and a["mqtt_username"] != tok
    second = _cred(cloud, tok, request)
    assert second.status_code == 201, second.text
    b = second.json()["mqtt"]
    assert b["mqtt_client_id"] == a["mqtt_client_id"]
    assert b["mqtt_username"] != a["mqtt_username"]
    assert b["mqtt_credential"] != a["mqtt_credential"]


def test_credentials_concurrent_requests_get_distinct_usernames(cloud):
    tok = cloud.token(0)
    body = {"device_id": cloud.client(0)[2]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda _: _cred(cloud, tok, body), range(12)))
    assert [r.status_code for r in rs] == [201] * 12, [r.text for r in rs if r.status_code != 201]
    creds = [r.json()["mqtt"] for r in rs]
    assert len({c["mqtt_username"] for c in creds}) == 12
    assert len({c["mqtt_credential"] for c in creds}) == 12


def test_credentials_omitted_scopes_use_device_defaults(cloud):
    tok = cloud.token(0)
    device_id = cloud.client(0)[2]
    defaults = cloud.api.get(_catalog_path(device_id), headers=_bearer(tok)).json()[
        "mqtt"]["credential_endpoint"]["body"]["scopes"]
    r = _cred(cloud, tok, {"device_id": device_id})
    assert r.status_code == 201, r.text
    scopes = r.json()["mqtt"]["scopes"]
    assert "iot:mqtt:connect" in scopes
    assert scopes == defaults


def test_credentials_narrow_scopes(cloud):
    tok = cloud.token(0)
    r = _cred(cloud, tok, {"device_id": cloud.client(0)[2], "scopes": ["iot:mqtt:connect"]})
    assert r.status_code == 201, r.text
    assert r.json()["mqtt"]["scopes"] == ["iot:mqtt:connect"]


def test_credentials_scope_the_token_lacks(cloud):
    tok = cloud.token(0, scope="iot:catalog:read iot:mqtt:connect iot:mqtt:ack:read")
    device_id = cloud.client(0)[2]
    before = _cred_count(cloud, device_id)
    r = _cred(cloud, tok, {"device_id": device_id,
                           "scopes": ["iot:mqtt:connect", "iot:mqtt:feed-data:write"]})
    _err(r, 403, "insufficient_scope")
    assert _cred_count(cloud, device_id) == before
    # Within the token's scopes the same token is fine.
    r = _cred(cloud, tok, {"device_id": device_id, "scopes": ["iot:mqtt:connect", "iot:mqtt:ack:read"]})
    assert r.status_code == 201, r.text


def _cred_bad_cases(own, other):
    """(id, request kwargs, status, error) for the demo device's token."""
    conn = ["iot:mqtt:connect"]
    return [
        ("empty_object", dict(json={}), 400, "invalid_request"),
        ("no_device_id", dict(json={"scopes": conn}), 400, "invalid_request"),
        ("device_id_string", dict(json={"device_id": str(own), "scopes": conn}), 400, "invalid_request"),
        ("device_id_true", dict(json={"device_id": True, "scopes": conn}), 400, "invalid_request"),
        ("device_id_float", dict(json={"device_id": float(own), "scopes": conn}), 400, "invalid_request"),
        ("device_id_null", dict(json={"device_id": None, "scopes": conn}), 400, "invalid_request"),
        ("device_id_list", dict(json={"device_id": [own], "scopes": conn}), 400, "invalid_request"),
        ("other_device", dict(json={"device_id": other, "scopes": conn}), 403, "access_denied"),
        ("unknown_device", dict(json={"device_id": 99999, "scopes": conn}), 403, "access_denied"),
        ("scopes_string", dict(json={"device_id": own, "scopes": "iot:mqtt:connect"}), 400, "invalid_request"),
        ("scopes_object", dict(json={"device_id": own, "scopes": {"iot:mqtt:connect": True}}),
         400, "invalid_request"),
        ("scopes_null", dict(json={"device_id": own, "scopes": None}), 400, "invalid_request"),
        ("scopes_not_strings", dict(json={"device_id": own, "scopes": ["iot:mqtt:connect", 7]}),
         400, "invalid_request"),
        ("unknown_scope", dict(json={"device_id": own, "scopes": conn + ["iot:mqtt:everything"]}),
         400, "invalid_scope"),
        ("non_mqtt_scope", dict(json={"device_id": own, "scopes": conn + ["iot:catalog:read"]}),
         400, "invalid_scope"),
        ("no_connect_scope", dict(json={"device_id": own, "scopes": ["iot:mqtt:ack:read"]}),
         400, "invalid_scope"),
        ("empty_scopes", dict(json={"device_id": own, "scopes": []}), 400, "invalid_scope"),
        ("not_json", dict(content=b"{device_id: 12345", headers={"Content-Type": "application/json"}),
         400, "invalid_request"),
        ("empty_body", dict(content=b"", headers={"Content-Type": "application/json"}), 400, "invalid_request"),
        ("not_utf8", dict(content=b'{"device_id": "\xff"}', headers={"Content-Type": "application/json"}),
         400, "invalid_request"),
        ("json_array", dict(json=[{"device_id": own}]), 400, "invalid_request"),
        ("json_number", dict(json=own), 400, "invalid_request"),
        ("deep_nesting", dict(content=b"[" * 100000 + b"]" * 100000, headers={"Content-Type": "application/json"}),
         413, "invalid_request"),
        ("form_body", dict(data={"device_id": str(own)}), 415, "invalid_request"),
        ("text_plain", dict(content=b'{"device_id": %d}' % own, headers={"Content-Type": "text/plain"}),
         415, "invalid_request"),
        ("no_content_type", dict(content=b'{"device_id": %d}' % own), 415, "invalid_request"),
        ("oversized", dict(json={"device_id": own, "pad": OVERSIZE}), 413, "invalid_request"),
        ("oversized_chunked", dict(content=[b'{"device_id": %d, "pad": "' % own] + [b"x" * 1024] * 9 + [b'"}'],
                                   headers={"Content-Type": "application/json"}), 413, "invalid_request"),
    ]


CRED_BAD = _cred_bad_cases(12345, 12346)


@pytest.mark.parametrize("kwargs,status,error", [c[1:] for c in CRED_BAD], ids=[c[0] for c in CRED_BAD])
def test_credentials_rejects(cloud, kwargs, status, error):
    own, other = cloud.client(0)[2], cloud.client(1)[2]
    assert (own, other) == (12345, 12346)  # the ids baked into CRED_BAD
    tok = cloud.token(0)
    before = _cred_count(cloud, own), _cred_count(cloud, other)
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("content"), list):
        kwargs["content"] = iter(kwargs["content"])  # a stream without Content-Length (chunked)
    r = _cred(cloud, tok, **kwargs)
    body = _err(r, status, error)
    assert "mqtt" not in body
    assert (_cred_count(cloud, own), _cred_count(cloud, other)) == before


def test_credentials_deeply_nested_json_within_limit(cloud):
    tok = cloud.token(0)
    r = _cred(cloud, tok, content=b"[" * 4000 + b"]" * 4000, headers={"Content-Type": "application/json"})
    _err(r, 400, "invalid_request")


@pytest.mark.parametrize("auth", [None, "Bearer nope", "Basic " + _b64("demo-gateway:x")],
                         ids=["none", "garbage", "basic"])
def test_credentials_need_a_bearer_token(cloud, auth):
    headers = {"Authorization": auth} if auth else {}
    r = cloud.api.post("/iot/v1/mqtt-credentials", json={"device_id": cloud.client(0)[2]}, headers=headers)
    _err(r, 401, "invalid_token")
    assert r.headers["www-authenticate"].startswith("Bearer ")


# --- POST /oauth/revoke --------------------------------------------------------

def test_revoke_own_token(cloud):
    cid, secret, device_id = cloud.client(0)
    tok = cloud.token(0)
    r = cloud.api.post("/oauth/revoke", data={"token": tok, "token_type_hint": "access_token"},
                       auth=(cid, secret))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    _err(cloud.api.get(_catalog_path(device_id), headers=_bearer(tok)), 401, "invalid_token")
    _err(_cred(cloud, tok, {"device_id": device_id}), 401, "invalid_token")
    # Revoking again is still a success (RFC 7009 2.2).
    r = cloud.api.post("/oauth/revoke", data={"token": tok}, auth=(cid, secret))
    assert r.status_code == 200, r.text


def test_revoke_with_form_client_auth(cloud):
    cid, secret, device_id = cloud.client(1)
    tok = cloud.token(1)
    r = cloud.api.post("/oauth/revoke", data={"token": tok, "client_id": cid, "client_secret": secret})
    assert r.status_code == 200, r.text
    _err(cloud.api.get(_catalog_path(device_id), headers=_bearer(tok)), 401, "invalid_token")


def test_revoke_unknown_token_is_ok(cloud):
    cid, secret, _ = cloud.client(0)
    r = cloud.api.post("/oauth/revoke", data={"token": "never-issued-" + "x" * 20}, auth=(cid, secret))
    assert r.status_code == 200, r.text


def test_revoke_other_clients_token(cloud):
    cid, secret, _ = cloud.client(0)
    theirs = cloud.token(1)
    r = cloud.api.post("/oauth/revoke", data={"token": theirs}, auth=(cid, secret))
    _err(r, 400, "unauthorized_client")
    r = cloud.api.get(_catalog_path(cloud.client(1)[2]), headers=_bearer(theirs))
    assert r.status_code == 200, r.text


def _revoke_bad_cases():
    return [
        ("no_client_auth", lambda c, s, t: dict(data={"token": t}), 401, "invalid_client"),
        ("wrong_secret", lambda c, s, t: dict(data={"token": t}, auth=(c, s + "x")), 401, "invalid_client"),
        ("unknown_client", lambda c, s, t: dict(data={"token": t}, auth=("nobody", s)), 401, "invalid_client"),
        ("bearer_instead_of_client_auth", lambda c, s, t: dict(data={"token": t}, headers=_bearer(t)),
         401, "invalid_client"),
        ("missing_token", lambda c, s, t: dict(data={"token_type_hint": "access_token"}, auth=(c, s)),
         400, "invalid_request"),
        ("empty_token", lambda c, s, t: dict(data={"token": ""}, auth=(c, s)), 400, "invalid_request"),
        ("duplicated_token", lambda c, s, t: dict(
            content=("token=%s&token=%s" % (t, t)).encode(), headers=dict(FORM, **_basic(c, s))),
         400, "invalid_request"),
        ("json_body", lambda c, s, t: dict(json={"token": t}, auth=(c, s)), 400, "invalid_request"),
        ("both_auth_methods", lambda c, s, t: dict(data={"token": t, "client_secret": s}, auth=(c, s)),
         400, "invalid_request"),
        ("oversized", lambda c, s, t: dict(data={"token": t, "pad": OVERSIZE}, auth=(c, s)),
         413, "invalid_request"),
    ]


REVOKE_BAD = _revoke_bad_cases()


@pytest.mark.parametrize("make,status,error", [c[1:] for c in REVOKE_BAD], ids=[c[0] for c in REVOKE_BAD])
def test_revoke_rejects(cloud, make, status, error):
    cid, secret, device_id = cloud.client(0)
    tok = cloud.token(0)
    r = cloud.api.post("/oauth/revoke", **make(cid, secret, tok))
    _err(r, status, error)
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Basic ")
    # A refused revocation leaves the token working.
    assert cloud.api.get(_catalog_path(device_id), headers=_bearer(tok)).status_code == 200


# --- routing -----------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/no/such/endpoint"),
    ("POST", "/oauth/tokens"),
    ("GET", "/iot/v1/devices/12345"),
    ("GET", "/iot/v1/devices/12345/mqtt/extra"),
    ("GET", "/iot/v2/devices/12345/mqtt"),
])
def test_unknown_path_is_404_json(cloud, method, path):
    _err(cloud.api.request(method, path), 404, "not_found")


@pytest.mark.parametrize("method,path", [
    ("GET", "/oauth/token"),
    ("PUT", "/oauth/token"),
    ("GET", "/oauth/revoke"),
    ("POST", "/iot/v1/devices/12345/mqtt"),
    ("DELETE", "/iot/v1/devices/12345/mqtt"),
    ("GET", "/iot/v1/mqtt-credentials"),
])
def test_wrong_method_is_405_json(cloud, method, path):
    _err(cloud.api.request(method, path), 405, "invalid_request")


# --- robustness ----------------------------------------------------------------

def test_burst_of_bad_requests_then_full_bootstrap(cloud):
    cid, secret, own = cloud.client(0)
    tok = cloud.token(0)
    logged = len(cloud.output)
    jobs = []
    for name, make, status, error in TOKEN_BAD:
        if "chunked" not in name:
            jobs.append(("POST", "/oauth/token", make(cid, secret), status, error))
    for name, kwargs, status, error in CRED_BAD:
        if "chunked" not in name and name != "deep_nesting":
            kw = dict(kwargs)
            kw["headers"] = dict(_bearer(tok), **kw.get("headers", {}))
            jobs.append(("POST", "/iot/v1/mqtt-credentials", kw, status, error))
    for name, make, status, error in REVOKE_BAD:
        jobs.append(("POST", "/oauth/revoke", make(cid, secret, tok), status, error))
    jobs += [
        ("GET", _catalog_path("abc"), dict(headers=_bearer(tok)), 400, "invalid_request"),
        ("GET", _catalog_path(12346), dict(headers=_bearer(tok)), 403, "access_denied"),
        ("GET", _catalog_path(own), dict(headers=_bearer("garbage")), 401, "invalid_token"),
        ("GET", _catalog_path(own), {}, 401, "invalid_token"),
        ("GET", "/nowhere", {}, 404, "not_found"),
        ("GET", "/oauth/token", {}, 405, "invalid_request"),
    ]
    assert len(jobs) >= 50

    def run(job):
        method, path, kw, status, error = job
        return job, cloud.api.request(method, path, **kw)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    for (method, path, kw, status, error), r in results:
        assert r.status_code == status, (method, path, kw, r.status_code, r.text)
        assert r.json()["error"] == error, (method, path, kw, r.text)
    assert cloud.proc.poll() is None
    assert not [line for line in cloud.output[logged:] if "internal error" in line]
    # The token used in the burst was never revoked by it, and the server still bootstraps.
    assert cloud.api.get(_catalog_path(own), headers=_bearer(tok)).status_code == 200
    tok2, catalog, cred = cloud.bootstrap()
    assert catalog["code"] == 2000
    assert cred["mqtt_username"] and cred["mqtt_credential"]
