"""The fleet file: devices, their routes, and the OAuth clients that act for them.

One JSON file (``demo_fleet.json`` ships with the tool). A client without a
``client_secret`` gets one generated at first start, kept in the state folder
(``secrets.json``, mode 0600) so it survives restarts and never lands in git.
"""
import json
import os
import secrets as _secrets

SCOPES = (
    "iot:catalog:read",
    "iot:mqtt:connect",
    "iot:mqtt:ack:read",
    "iot:mqtt:feed-data:write",
    "iot:mqtt:desired:read",
)
MQTT_SCOPES = SCOPES[1:]
VALUE_TYPES = ("number", "integer", "boolean", "string")
SOURCE_TYPES = ("sensor", "command")
TOPIC_ROOT = "realer/iot/v1/devices/"

DEFAULT_FLEET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_fleet.json")


class FleetError(ValueError):
    pass


class Route:
    def __init__(self, device, d):
        self.device = device
        self.id = _need(d, "id", str, "route")
        self.name = d.get("name", self.id)
        self.source_type = _need(d, "source_type", str, "route " + self.id)
        if self.source_type not in SOURCE_TYPES:
            raise FleetError("route %s: source_type must be one of %s" % (self.id, SOURCE_TYPES))
        self.value_type = _need(d, "value_type", str, "route " + self.id)
        if self.value_type not in VALUE_TYPES:
            raise FleetError("route %s: value_type must be one of %s" % (self.id, VALUE_TYPES))
        self.min = d.get("min")
        self.max = d.get("max")
        self.max_length = d.get("max_length", 256)
        self.unit = d.get("unit")
        base = "%s%s/routes/%s/" % (TOPIC_ROOT, device.mqtt_client_id, self.id)
        self.feed_data_topic = base + "feed-data"
        self.desired_topic = base + "desired" if self.source_type == "command" else None

    def check_value(self, value):
        """Return None when `value` fits this route, else (error_type, message)."""
        t = self.value_type
        if t == "boolean":
            # Relays report true/false; 0 and 1 are accepted as the same values.
            if isinstance(value, bool) or (type(value) is int and value in (0, 1)):
                return None
            return ("invalid_value_type", "value must be a boolean (or 0/1)")
        if t == "string":
            if not isinstance(value, str):
                return ("invalid_value_type", "value must be a string")
            if len(value) > self.max_length:
                return ("value_out_of_range", "value longer than %d characters" % self.max_length)
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return ("invalid_value_type", "value must be a %s" % t)
        if t == "integer" and not (type(value) is int or (isinstance(value, float) and value.is_integer())):
            return ("invalid_value_type", "value must be an integer")
        if value != value or value in (float("inf"), float("-inf")):
            return ("invalid_value_type", "value must be a finite number")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return ("value_out_of_range", "value must be within [%s, %s]" % (self.min, self.max))
        return None

    def catalog_entry(self):
        mqtt = {
            "feed_data_topic": self.feed_data_topic,
            "feed_data_publish_scope": "iot:mqtt:feed-data:write",
        }
        if self.desired_topic:
            mqtt["desired_topic"] = self.desired_topic
            mqtt["desired_subscribe_scope"] = "iot:mqtt:desired:read"
        entry = {"route_id": self.id, "name": self.name, "source_type": self.source_type,
                 "value_type": self.value_type, "mqtt": mqtt}
        for k in ("min", "max", "unit"):
            if getattr(self, k) is not None:
                entry[k] = getattr(self, k)
        return entry


class Device:
    def __init__(self, d):
        self.id = _need(d, "id", int, "device")
        self.name = d.get("name", str(self.id))
        self.mqtt_client_id = _need(d, "mqtt_client_id", str, "device %s" % self.id)
        self.ack_topic = "%s%s/acks" % (TOPIC_ROOT, self.mqtt_client_id)
        self.routes = [Route(self, r) for r in d.get("routes", [])]
        self.route_by_id = {r.id: r for r in self.routes}

    def route(self, key):
        """A route by id or by name."""
        if key in self.route_by_id:
            return self.route_by_id[key]
        for r in self.routes:
            if r.name == key:
                return r
        return None

    @property
    def command_routes(self):
        return [r for r in self.routes if r.source_type == "command"]


class Client:
    def __init__(self, d):
        self.client_id = _need(d, "client_id", str, "client")
        self.device_id = _need(d, "device_id", int, "client " + self.client_id)
        self.scopes = list(d.get("scopes", SCOPES))
        for s in self.scopes:
            if s not in SCOPES:
                raise FleetError("client %s: unknown scope %r" % (self.client_id, s))
        self.client_secret = d.get("client_secret")


class Fleet:
    def __init__(self, data):
        self.token_expires_in = int(data.get("token", {}).get("expires_in", 3600))
        cred = data.get("credential", {})
        self.credential_expires_in = int(cred.get("expires_in", 3600))
        self.credential_renew_after = int(cred.get("renew_after", self.credential_expires_in * 3 // 4))
        self.credential_hard_expires_in = int(cred.get("session_hard_expires_in", self.credential_expires_in))
        self.limits = dict(data.get("limits", {}))
        self.limits.setdefault("max_payload_bytes", 2048)
        self.devices = [Device(d) for d in data.get("devices", [])]
        self.clients = [Client(c) for c in data.get("clients", [])]
        self.device_by_id = {d.id: d for d in self.devices}
        self.device_by_mqtt_id = {d.mqtt_client_id: d for d in self.devices}
        self.client_by_id = {c.client_id: c for c in self.clients}
        for c in self.clients:
            if c.device_id not in self.device_by_id:
                raise FleetError("client %s: unknown device_id %s" % (c.client_id, c.device_id))

    def set_lifetimes(self, credential_ttl=None, renew_after=None, hard_ttl=None, token_ttl=None):
        if credential_ttl is not None:
            self.credential_expires_in = credential_ttl
            self.credential_hard_expires_in = credential_ttl
            self.credential_renew_after = credential_ttl * 3 // 4
        if renew_after is not None:
            self.credential_renew_after = renew_after
        if hard_ttl is not None:
            self.credential_hard_expires_in = hard_ttl
        if token_ttl is not None:
            self.token_expires_in = token_ttl

    def find_route(self, key, device_id=None):
        """(device, route) for a route id, or a route name on `device_id` (default: the first device)."""
        for d in self.devices:
            if key in d.route_by_id and device_id in (None, d.id):
                return d, d.route_by_id[key]
        dev = self.device_by_id.get(device_id) if device_id is not None else (
            self.devices[0] if self.devices else None)
        r = dev.route(key) if dev else None
        return (dev, r) if r else (None, None)

    def parse_topic(self, topic):
        """(device, route, kind) for a route topic, else (None, None, None)."""
        if not topic.startswith(TOPIC_ROOT):
            return None, None, None
        parts = topic[len(TOPIC_ROOT):].split("/")
        if len(parts) != 4 or parts[1] != "routes":
            return None, None, None
        dev = self.device_by_mqtt_id.get(parts[0])
        route = dev.route_by_id.get(parts[2]) if dev else None
        return dev, route, parts[3]


def _need(d, key, kind, where):
    if not isinstance(d, dict) or key not in d:
        raise FleetError("%s: missing %r" % (where, key))
    v = d[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise FleetError("%s: %r must be %s" % (where, key, kind.__name__))
    return v


def load(path, state_dir):
    """Read the fleet file; fill in generated client secrets kept in `state_dir`."""
    with open(path) as f:
        try:
            data = json.load(f)
        except ValueError as exc:
            raise FleetError("%s: not valid JSON: %s" % (path, exc)) from exc
    fleet = Fleet(data)
    secrets_path = os.path.join(state_dir, "secrets.json")
    try:
        with open(secrets_path) as f:
            kept = json.load(f)
    except FileNotFoundError:
        kept = {}
    changed = False
    for c in fleet.clients:
        if not c.client_secret:
            if c.client_id not in kept:
                kept[c.client_id] = _secrets.token_urlsafe(24)
                changed = True
            c.client_secret = kept[c.client_id]
    if changed:
        tmp = secrets_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(kept, f, indent=1)
        os.replace(tmp, secrets_path)
    return fleet


def _credential_request(self, device):
    """The catalog's default credential request body for `device`."""
    scopes = ["iot:mqtt:connect", "iot:mqtt:ack:read", "iot:mqtt:feed-data:write"]
    if device.command_routes:
        scopes.append("iot:mqtt:desired:read")
    return {"device_id": device.id, "scopes": scopes}


Fleet.credential_request = _credential_request
