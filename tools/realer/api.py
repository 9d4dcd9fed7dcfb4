"""The HTTPS API of the local Realer cloud (Starlette, served by uvicorn).

Device endpoints, as seed 001 shows them:
  POST /oauth/token                       client_credentials (Basic header or form fields)
  GET  /iot/v1/devices/{device_id}/mqtt   the MQTT catalog
  POST /iot/v1/mqtt-credentials           a short-lived MQTT CONNECT tuple (201)
  POST /oauth/revoke                      RFC 7009 token revocation
Admin endpoints (Bearer: the admin token in the state folder's run.json), used by
the CLI and by tests: /admin/status, /admin/desired, /admin/faults, /admin/broker/restart.

Errors are JSON: {"error": <RFC 6749 / RFC 6750 code>, "error_description": "..."}.
"""
import asyncio
import base64
import binascii
import hmac
import json
import os
import secrets
import time
import urllib.parse
from email.utils import formatdate

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import fleet as _fleet
from .broker import BrokerError
from .faults import FaultError

MAX_BODY = 8192
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
STALL_SECONDS = 3600


class HTTPError(Exception):
    def __init__(self, status, error, description, headers=None, **extra):
        super().__init__(description)
        self.status = status
        self.body = dict(extra, error=error, error_description=description)
        self.headers = headers or {}


def _json(body, status=200, headers=None):
    return JSONResponse(body, status_code=status, headers=headers)


async def _body(request, kinds):
    """The request body, bounded, after checking its content type."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in kinds:
        raise HTTPError(415 if "application/json" in kinds else 400, "invalid_request",
                        "Content-Type must be %s" % " or ".join(kinds))
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > MAX_BODY:
                raise HTTPError(413, "invalid_request", "body larger than %d bytes" % MAX_BODY)
        except ValueError:
            raise HTTPError(400, "invalid_request", "bad Content-Length") from None
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise HTTPError(413, "invalid_request", "body larger than %d bytes" % MAX_BODY)
    return bytes(data)


async def _form(request):
    raw = await _body(request, ("application/x-www-form-urlencoded",))
    try:
        pairs = urllib.parse.parse_qsl(raw.decode("utf-8"), keep_blank_values=True,
                                       strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        raise HTTPError(400, "invalid_request", "body is not a valid form") from None
    form = {}
    for k, v in pairs:
        if k in form:
            raise HTTPError(400, "invalid_request", "parameter %r given twice" % k)
        form[k] = v
    # RFC 6749 3.2: a parameter sent without a value is treated as omitted.
    return {k: v for k, v in form.items() if v != ""}


async def _json_body(request):
    raw = await _body(request, ("application/json",))
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=lambda c: float("nan"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HTTPError(400, "invalid_request", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "invalid_request", "body must be a JSON object")
    return data


def _basic(request):
    """(client_id, secret) from an Authorization: Basic header, None when absent."""
    auth = request.headers.get("authorization")
    if auth is None:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "basic":
        raise HTTPError(401, "invalid_client", "use HTTP Basic client authentication",
                        {"WWW-Authenticate": 'Basic realm="realer"'})
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise HTTPError(401, "invalid_client", "malformed Basic credentials",
                        {"WWW-Authenticate": 'Basic realm="realer"'}) from None
    if ":" not in decoded:
        raise HTTPError(401, "invalid_client", "malformed Basic credentials",
                        {"WWW-Authenticate": 'Basic realm="realer"'})
    cid, _, secret = decoded.partition(":")
    # RFC 6749 2.3.1: both parts are form-urlencoded before Basic encoding.
    return urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)


def build(cloud):
    """The Starlette app for a running `cloud` (see server.Cloud)."""
    fleet, ledger = cloud.fleet, cloud.ledger
    last_credential = {}  # device_id -> the last credential number handed out

    def authenticate_client(request, form):
        basic = _basic(request)
        if basic and ("client_id" in form and form["client_id"] != basic[0] or "client_secret" in form):
            raise HTTPError(400, "invalid_request", "use one client authentication method")
        if basic:
            cid, secret = basic
        else:
            cid, secret = form.get("client_id"), form.get("client_secret")
            if not cid or secret is None:
                raise HTTPError(401, "invalid_client", "client authentication required",
                                {"WWW-Authenticate": 'Basic realm="realer"'})
        client = fleet.client_by_id.get(cid)
        if client is None or not hmac.compare_digest(client.client_secret.encode(), secret.encode()):
            raise HTTPError(401, "invalid_client", "unknown client or wrong secret",
                            {"WWW-Authenticate": 'Basic realm="realer"'})
        return client

    def bearer(request, scope=None):
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        hdr = {"WWW-Authenticate": 'Bearer realm="realer"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPError(401, "invalid_token", "a Bearer access token is required", hdr)
        row = ledger.token(token.strip())
        if row is None or row[4] is not None or row[3] <= time.time():
            raise HTTPError(401, "invalid_token", "the access token is unknown, expired or revoked",
                            {"WWW-Authenticate": 'Bearer realm="realer", error="invalid_token"'})
        client_id, device_id, scopes = row[0], row[1], row[2]
        if scope and scope not in scopes:
            raise HTTPError(403, "insufficient_scope", "the token lacks scope %s" % scope,
                            {"WWW-Authenticate": 'Bearer realm="realer", error="insufficient_scope",'
                                                 ' scope="%s"' % scope}, scope=scope)
        return token.strip(), client_id, device_id, scopes

    async def fault(name):
        knob = cloud.faults.take_http(name)
        if knob is None:
            return None
        if knob.get("delay"):
            await asyncio.sleep(knob["delay"])
        if knob.get("stall"):
            await asyncio.sleep(STALL_SECONDS)
        headers = {}
        if "retry_after" in knob:
            headers["Retry-After"] = str(knob["retry_after"])
        if knob.get("garbage"):
            return Response(os.urandom(64) + b"<html>not json", 200, headers,
                            media_type="application/json")
        if knob.get("huge"):
            shell = '{"code":2000,"padding":"%s"}'
            pad = "x" * max(0, knob["huge"] - len(shell % ""))  # at least `huge` bytes
            return Response(shell % pad, 200, headers,
                            media_type="application/json")
        if "status" in knob:
            return _json({"error": "server_error" if knob["status"] >= 500 else "injected_fault",
                          "error_description": "fault knob: status %d" % knob["status"]},
                         knob["status"], headers)
        return None  # only a delay: answer normally

    def endpoint(name):
        def wrap(handler):
            async def run(request):
                try:
                    injected = await fault(name) if name else None
                    if injected is not None:
                        return injected
                    return await handler(request)
                except HTTPError as e:
                    return _json(e.body, e.status, e.headers)
            return run
        return wrap

    @endpoint("token")
    async def token(request):
        form = await _form(request)
        grant = form.get("grant_type")
        if not grant:
            raise HTTPError(400, "invalid_request", "grant_type is required")
        client = authenticate_client(request, form)
        if grant != "client_credentials":
            raise HTTPError(400, "unsupported_grant_type", "only client_credentials is supported")
        if "scope" in form:
            scopes = form["scope"].split()
            if not scopes:
                raise HTTPError(400, "invalid_scope", "scope is empty")
            extra = [s for s in scopes if s not in client.scopes]
            if extra:
                raise HTTPError(400, "invalid_scope", "scope not allowed for this client: %s"
                                % " ".join(extra))
        else:
            scopes = list(client.scopes)
        scopes = list(dict.fromkeys(scopes))
        access = secrets.token_urlsafe(24)
        ledger.add_token(access, client.client_id, client.device_id, scopes, fleet.token_expires_in)
        cloud.log("token  issued to %s (device %d), scopes: %s" % (
            client.client_id, client.device_id, " ".join(scopes)))
        return _json({"access_token": access, "token_type": "Bearer",
                      "expires_in": fleet.token_expires_in, "scope": " ".join(scopes)},
                     headers=NO_STORE)

    @endpoint("catalog")
    async def catalog(request):
        _, _, device_id, _ = bearer(request, "iot:catalog:read")
        raw = request.path_params["device_id"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise HTTPError(400, "invalid_request", "device_id must be an integer")
        if int(raw) != device_id:
            raise HTTPError(403, "access_denied", "this token is not for device %s" % raw)
        dev = fleet.device_by_id[device_id]
        cred = fleet.credential_request(dev)
        body = {
            "code": 2000,
            "mqtt": {
                "broker_url": cloud.broker_url,
                "protocol": "mqtt-3.1.1",
                "protocols_supported": ["mqtt-3.1.1", "mqtt-5.0"],
                "client_id": dev.mqtt_client_id,
                "qos": 1,
                "retain_policy": "disabled",
                "feed_data_ack_topic": dev.ack_topic,
                "feed_data_ack_subscribe_scope": "iot:mqtt:ack:read",
                "credential_endpoint": {"endpoint": "/iot/v1/mqtt-credentials",
                                        "http_method": "POST", "body": cred},
            },
            "mqtt_routes": [r.catalog_entry() for r in dev.routes],
            "limits": dict(fleet.limits),
            "credential_lifecycle": {
                "expires_in": fleet.credential_expires_in,
                "renew_after": fleet.credential_renew_after,
                "session_hard_expires_in": fleet.credential_hard_expires_in,
                "renewal": "controlled_reconnect",
            },
        }
        cloud.log("catalog read by device %d" % device_id)
        return _json(body)

    @endpoint("credentials")
    async def credentials(request):
        access, client_id, device_id, token_scopes = bearer(request)
        data = await _json_body(request)
        did = data.get("device_id")
        if "device_id" not in data:
            raise HTTPError(400, "invalid_request", "device_id is required")
        if not isinstance(did, int) or isinstance(did, bool):
            raise HTTPError(400, "invalid_request", "device_id must be an integer")
        if did != device_id:
            raise HTTPError(403, "access_denied", "this token is not for device %d" % did)
        dev = fleet.device_by_id[device_id]
        if "scopes" in data:
            scopes = data["scopes"]
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                raise HTTPError(400, "invalid_request", "scopes must be a list of strings")
            unknown = [s for s in scopes if s not in _fleet.MQTT_SCOPES]
            if unknown:
                raise HTTPError(400, "invalid_scope", "not MQTT scopes: %s" % " ".join(unknown))
        else:
            scopes = fleet.credential_request(dev)["scopes"]
        scopes = list(dict.fromkeys(scopes))
        if "iot:mqtt:connect" not in scopes:
            raise HTTPError(400, "invalid_scope", "iot:mqtt:connect is required")
        missing = [s for s in scopes if s not in token_scopes]
        if missing:
            raise HTTPError(403, "insufficient_scope", "the token lacks %s" % " ".join(missing),
                            scope=" ".join(missing))
        # Reserve the number before the await below, so that concurrent requests get distinct names.
        n = max(ledger.credential_count(device_id), last_credential.get(device_id, 0)) + 1
        last_credential[device_id] = n
        username = "realer-%s-cred-v%d" % (dev.mqtt_client_id, n)
        password = secrets.token_urlsafe(24)
        try:
            await run_in_threadpool(cloud.dynsec.add_credential, username, password,
                                    dev.mqtt_client_id, acls_for(dev, scopes))
        except BrokerError as exc:
            raise HTTPError(503, "temporarily_unavailable", "broker: %s" % exc,
                            {"Retry-After": "2"}) from None
        ledger.add_credential(username, device_id, client_id, scopes, access,
                              fleet.credential_expires_in, fleet.credential_hard_expires_in)
        cloud.log("credential %s issued (expires in %ds, renew after %ds), scopes: %s" % (
            username, fleet.credential_expires_in, fleet.credential_renew_after, " ".join(scopes)))
        return _json({"code": 2000, "mqtt": {
            "mqtt_client_id": dev.mqtt_client_id, "mqtt_username": username,
            "mqtt_credential": password, "scopes": scopes,
            "expires_in": fleet.credential_expires_in, "renew_after": fleet.credential_renew_after,
            "session_hard_expires_in": fleet.credential_hard_expires_in}}, 201, NO_STORE)

    @endpoint("revoke")
    async def revoke(request):
        form = await _form(request)
        client = authenticate_client(request, form)
        tok = form.get("token")
        if not tok:
            raise HTTPError(400, "invalid_request", "token is required")
        row = ledger.token(tok)
        if row is not None:  # RFC 7009: an unknown token is not an error
            if row[0] != client.client_id:
                raise HTTPError(400, "unauthorized_client", "the token was issued to another client")
            ledger.revoke_token(tok)
            for username in ledger.credentials_of_token(tok):
                await run_in_threadpool(cloud.remove_credential, username, "revoked")
            cloud.log("revoke token of %s; its MQTT credentials are removed" % client.client_id)
        return Response(status_code=200, headers=NO_STORE)

    # --- admin --------------------------------------------------------------
    def admin(handler):
        async def run(request):
            auth = request.headers.get("authorization", "")
            if not hmac.compare_digest(auth.encode(), ("Bearer " + cloud.admin_token).encode()):
                return _json({"error": "invalid_token", "error_description": "admin token required"}, 401)
            try:
                return await handler(request)
            except HTTPError as e:
                return _json(e.body, e.status, e.headers)
            except (FaultError, ValueError) as e:
                return _json({"error": "invalid_request", "error_description": str(e)}, 400)
            except BrokerError as e:
                return _json({"error": "broker_error", "error_description": str(e)}, 503)
        return run

    @admin
    async def admin_status(request):
        return _json(cloud.status())

    @admin
    async def admin_desired(request):
        data = await _json_body(request)
        dev, route = fleet.find_route(str(data.get("route", "")), data.get("device_id"))
        if route is None:
            raise HTTPError(404, "not_found", "no route %r on device %s" % (
                data.get("route"), data.get("device_id", "(the first)")))
        if "raw" in data:
            payload = data["raw"].encode() if isinstance(data["raw"], str) else json.dumps(data["raw"]).encode()
            await run_in_threadpool(cloud.app.publish_raw, route, payload, bool(data.get("retain")))
            return _json({"published": len(payload)})
        if "value" not in data:
            raise HTTPError(400, "invalid_request", "value is required")
        msg = await run_in_threadpool(cloud.app.publish_desired, dev, route, data["value"],
                                      data.get("valid_for", 60), data.get("sequence_number"))
        return _json(dict(msg, topic=route.desired_topic))

    @admin
    async def admin_faults(request):
        if request.method == "DELETE":
            cloud.faults.clear()
            cloud.app.set_silent(False)
            return _json(cloud.faults.snapshot())
        data = await _json_body(request)
        target = data.pop("target", None)
        if target == "ack":
            if "silent" in data:
                await run_in_threadpool(cloud.app.set_silent, bool(data["silent"]))
            if "error" in data:
                cloud.faults.set_ack_errors(data["error"])
        else:
            cloud.faults.set_http(target, data)
        cloud.ledger.event("fault", target=target, knob=data)
        return _json(dict(cloud.faults.snapshot(), ack_silent=cloud.app.silent))

    @admin
    async def admin_broker_restart(request):
        # Not run_in_threadpool: mosquitto's PR_SET_PDEATHSIG follows the thread that
        # started it, and anyio ends idle worker threads; the event loop's default
        # executor keeps its threads until the emulator stops.
        await asyncio.to_thread(cloud.restart_broker)
        return _json({"restarted": True})

    async def not_found(request, exc):
        return _json({"error": "not_found", "error_description": "no such endpoint"}, 404)

    async def bad_method(request, exc):
        return _json({"error": "invalid_request", "error_description": "method not allowed"}, 405)

    async def server_error(request, exc):
        cloud.log("internal error on %s: %r" % (request.url.path, exc))
        return _json({"error": "server_error", "error_description": "internal error"}, 500)

    routes = [
        Route("/oauth/token", token, methods=["POST"]),
        Route("/oauth/revoke", revoke, methods=["POST"]),
        Route("/iot/v1/devices/{device_id}/mqtt", catalog, methods=["GET"]),
        Route("/iot/v1/mqtt-credentials", credentials, methods=["POST"]),
        Route("/admin/status", admin_status, methods=["GET"]),
        Route("/admin/desired", admin_desired, methods=["POST"]),
        Route("/admin/faults", admin_faults, methods=["POST", "DELETE"]),
        Route("/admin/broker/restart", admin_broker_restart, methods=["POST"]),
    ]
    return _Dated(Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method,
                                                                500: server_error}))


class _Dated:
    """Stamps each answer's `Date` as it is sent, as a real front end (nginx) does.

    uvicorn's own Date (turned off in server.py) is refreshed once a second by its main
    loop, so it can lag the clock by a second or more; the firmware reads Date as a lower
    bound of server time (docs/realer-protocol.md, desired state, rule 2)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def stamped(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", ())) +
                               [(b"date", formatdate(usegmt=True).encode())])
            await send(message)
        await self.app(scope, receive, stamped)


def acls_for(dev, scopes):
    """The broker ACLs that are exactly these scopes, for this device's topics."""
    acls = []
    if "iot:mqtt:ack:read" in scopes:
        acls.append({"acltype": "subscribeLiteral", "topic": dev.ack_topic, "allow": True})
    if "iot:mqtt:feed-data:write" in scopes:
        acls += [{"acltype": "publishClientSend", "topic": r.feed_data_topic, "allow": True}
                 for r in dev.routes]
    if "iot:mqtt:desired:read" in scopes:
        acls += [{"acltype": "subscribeLiteral", "topic": r.desired_topic, "allow": True}
                 for r in dev.command_routes]
    return acls
