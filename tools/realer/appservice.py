"""The Realer application service: acknowledges feed data and publishes desired state.

It is an ordinary MQTT client of the real broker (user ``realer-app``) with a
persistent session, so while it is "silent" (a fault knob) the broker queues
feed data for it, as a real back end that is down would see on return.

Decisions follow docs/realer-protocol.md:
  new message_id                    -> accepted  (one effect row in the ledger)
  same message_id, same content     -> replayed  (no second effect)
  same message_id, other content    -> conflict
  invalid payload                   -> rejected, retryable false, error.type names the problem
  internal failure (fault knob)     -> error, retryable true, no effect
"""
import datetime
import hashlib
import json
import re
import secrets
import threading
import time

from . import broker as _broker

VERSION = 1
FUTURE_TOLERANCE_S = 48 * 3600
REPORT_STATUSES = ("applied", "rejected", "stale")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


class Reject(Exception):
    def __init__(self, etype, message):
        super().__init__(message)
        self.type = etype
        self.message = message


def rfc3339(ts):
    """UTC, milliseconds, 'Z': 2026-11-21T21:02:46.123Z."""
    d = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (d.microsecond // 1000)


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339(text):
    """Seconds since the epoch, or raise ValueError. RFC 3339 only: a zone (Z or +hh:mm) is required."""
    if not isinstance(text, str) or not _RFC3339.match(text):
        raise ValueError("not an RFC 3339 date-time")
    t = text.upper()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(t).timestamp()


def _reject_constant(name):
    raise ValueError("%s is not JSON" % name)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class AppService:
    def __init__(self, fleet, ledger, brk, faults, log=print):
        self.fleet = fleet
        self.ledger = ledger
        self.faults = faults
        self.log = log
        self.max_payload = int(fleet.limits.get("max_payload_bytes", 2048))
        self.id_max = int(fleet.limits.get("message_id_max_length", 64))
        self._connected = threading.Event()
        self.client = _broker.service_client("realer-app", _broker.APP_USER, brk.app_password,
                                             brk.pki["ca"], clean_session=False,
                                             check_hostname=brk.check_hostname)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self._connected.clear()
        self.client.on_message = self._on_message
        self.port = brk.port
        self.silent = False

    # --- link ------------------------------------------------------------
    def start(self, timeout=5.0):
        self.client.connect_async("localhost", self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise _broker.BrokerError("the application service could not connect to the broker")

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def set_silent(self, silent):
        """Silent: disconnect and let the broker queue feed data; back: drain the queue."""
        if silent == self.silent:
            return
        self.silent = silent
        if silent:
            self.client.disconnect()
            self.client.loop_stop()
        else:
            self.client.reconnect()
            self.client.loop_start()
        self.ledger.event("ack_service", silent=silent)

    def _on_connect(self, client, userdata, flags, rc, props=None):
        if rc == 0:
            client.subscribe("realer/iot/v1/devices/+/routes/+/feed-data", qos=1)
            self._connected.set()

    # --- feed data -------------------------------------------------------
    def _on_message(self, client, userdata, msg):
        device, route, kind = self.fleet.parse_topic(msg.topic)
        if device is None or route is None or kind != "feed-data":
            self.log("ignored a message on %s (no such route)" % msg.topic)
            return
        ack = self.decide(device, route, msg.topic, msg.payload)
        client.publish(device.ack_topic, canonical(ack), qos=1)
        self.log("ack  %s %s message_id=%s%s" % (
            route.name, ack["status"], ack.get("message_id"),
            " error=" + ack["error"]["type"] if "error" in ack else ""))

    def decide(self, device, route, topic, payload):
        ack = {"version": VERSION, "status": "accepted", "retryable": False, "message_id": None}
        effect = None
        try:
            msg = self._validate(device, route, payload, ack)
            digest = hashlib.sha256(canonical(
                [route.id, msg["value"], msg["value_received_at"], msg.get("desired_id"),
                 msg.get("report_status")]).encode()).hexdigest()
            if self.faults.take_ack_error():
                ack.update(status="error", retryable=True,
                           error={"type": "internal_error",
                                  "message": "the application service failed; retry later"})
            else:
                seen = self.ledger.effect(device.id, msg["message_id"])
                if seen is None:
                    effect = {"digest": digest, "value": msg["value"],
                              "value_received_at": msg["value_received_at"],
                              "desired_id": msg.get("desired_id"),
                              "report_status": msg.get("report_status")}
                elif seen[1] == digest:
                    ack["status"] = "replayed"
                else:
                    ack.update(status="conflict", error={
                        "type": "message_id_conflict",
                        "message": "message_id was already used with other content"})
        except Reject as r:
            ack.update(status="rejected", error={"type": r.type, "message": r.message})
        if ack.get("desired_id") is None:
            ack.pop("desired_id", None)
        if ack["message_id"] is None:
            ack.pop("message_id")
        try:
            self.ledger.decide(device.id, route.id, topic, payload, ack, effect)
        except Exception as exc:  # noqa: BLE001 - any storage failure is an internal error
            ack.update(status="error", retryable=True,
                       error={"type": "internal_error", "message": "ledger: %s" % exc})
        return ack

    def _validate(self, device, route, payload, ack):
        if len(payload) > self.max_payload:
            raise Reject("payload_too_large", "payload is %d bytes; the limit is %d"
                         % (len(payload), self.max_payload))
        try:
            msg = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise Reject("invalid_json", "payload is not UTF-8 JSON: %s" % str(exc)[:80]) from None
        if not isinstance(msg, dict):
            raise Reject("invalid_payload", "payload must be a JSON object")
        mid = msg.get("message_id")
        if isinstance(mid, str) and 0 < len(mid) <= self.id_max and set(mid) <= _ID_CHARS:
            ack["message_id"] = mid
        elif "message_id" not in msg:
            raise Reject("missing_field", "message_id is required")
        else:
            raise Reject("invalid_message_id", "message_id must be a string of 1-%d characters"
                         " from [A-Za-z0-9-_.:]" % self.id_max)
        if "desired_id" in msg:
            if not isinstance(msg["desired_id"], str) or not msg["desired_id"]:
                raise Reject("invalid_desired_id", "desired_id must be a non-empty string")
            ack["desired_id"] = msg["desired_id"]
        if "version" in msg and msg["version"] != VERSION:
            raise Reject("unsupported_version", "version %r is not supported; use %d"
                         % (msg["version"], VERSION))
        for key in ("value", "value_received_at"):
            if key not in msg:
                raise Reject("missing_field", "%s is required" % key)
        bad = route.check_value(msg["value"])
        if bad:
            raise Reject(*bad)
        try:
            at = parse_rfc3339(msg["value_received_at"])
        except (ValueError, TypeError, OverflowError):
            raise Reject("invalid_timestamp", "value_received_at must be an RFC 3339 date-time"
                         " with a zone, e.g. 2026-11-21T21:02:46.123Z") from None
        if at > time.time() + FUTURE_TOLERANCE_S:
            raise Reject("timestamp_in_future", "value_received_at is more than 48 h ahead")
        status = msg.get("report_status")
        if "desired_id" in msg:
            if route.source_type != "command":
                raise Reject("not_a_command_route", "desired_id is only valid on command routes")
            if status is None:
                status = msg["report_status"] = "applied"
            if status not in REPORT_STATUSES:
                raise Reject("invalid_report_status", "report_status must be one of %s"
                             % ", ".join(REPORT_STATUSES))
            row = self.ledger.desired(msg["desired_id"])
            if row is None or row[0] != device.id or row[1] != route.id:
                raise Reject("unknown_desired_id", "no desired state %r on this route"
                             % msg["desired_id"])
            if row[3] is not None and row[4] != msg["message_id"]:
                raise Reject("desired_already_answered", "desired_id %r was answered by message_id %r"
                             % (msg["desired_id"], row[4]))
            if status == "applied" and row[3] is None and _norm(json.loads(row[2])) != _norm(msg["value"]):
                raise Reject("value_mismatch", "an applied command must report the desired value")
        elif status not in (None, "reported"):
            raise Reject("invalid_report_status", "without desired_id, report_status may only be"
                         " 'reported'")
        return msg

    # --- desired state ---------------------------------------------------
    def publish_desired(self, device, route, value, valid_for=60, sequence_number=None):
        """Publish desired state on the route's topic (QoS 1, retained). Returns the message."""
        if route.source_type != "command":
            raise ValueError("route %s is a sensor route" % route.name)
        bad = route.check_value(value)
        if bad:
            raise ValueError(bad[1])
        if not isinstance(valid_for, int) or isinstance(valid_for, bool) or not 0 < valid_for <= 86400:
            raise ValueError("valid_for_seconds must be an integer in 1..86400")
        desired_id = "dsr_" + secrets.token_hex(13)
        now = time.time()
        msg = {"version": VERSION, "desired_id": desired_id, "value": value,
               "valid_for_seconds": valid_for, "expires_at": rfc3339(now + valid_for)}
        msg["sequence_number"] = self.ledger.add_desired(
            desired_id, device.id, route.id, value, valid_for, msg["expires_at"], sequence_number)
        self._publish(route.desired_topic, canonical(msg).encode())
        self.log("desired %s value=%s seq=%d valid_for=%ds id=%s" % (
            route.name, json.dumps(value), msg["sequence_number"], valid_for, desired_id))
        return msg

    def publish_raw(self, route, payload, retain=False):
        """Publish any bytes on a desired topic: for hostile-input tests."""
        self._publish(route.desired_topic, payload, retain=retain)
        self.ledger.event("raw_desired", route=route.id, size=len(payload))

    def _publish(self, topic, payload, retain=True):
        if self.silent or not self._connected.is_set():
            raise _broker.BrokerError("the application service is not connected to the broker")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        if not info.is_published():
            raise _broker.BrokerError("the broker did not acknowledge the desired-state publish")


def _norm(v):
    """Booleans and 0/1 compare equal on boolean routes."""
    return int(v) if isinstance(v, bool) else v
