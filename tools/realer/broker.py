"""The real broker: mosquitto as a child process, with TLS and the dynamic-security plugin.

The emulator writes mosquitto's config and the plugin's initial JSON itself
(an admin client for the emulator and an application client for the ack
service), then manages MQTT credentials at run time through the plugin's
``$CONTROL/dynamic-security/v1`` topic.

Run as root, mosquitto would drop to the ``mosquitto`` user and could no longer
read the key or write its state; the config says ``user root`` then, and the
state folder stays private to the user who started the emulator.
"""
import base64
import ctypes
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt

ADMIN_USER = "realer-admin"
APP_USER = "realer-app"
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"

_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
    "/usr/lib/*/mosquitto/mosquitto_dynamic_security.so",
)


class BrokerError(RuntimeError):
    pass


def find_plugin():
    for pattern in _PLUGIN_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    raise BrokerError("mosquitto's dynamic-security plugin was not found; run ./deploy.sh setup")


def _password_entry(password):
    # The plugin's own format: PBKDF2-HMAC-SHA512, base64 salt and hash.
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": 101}


def _pdeathsig():
    # Linux: mosquitto gets SIGTERM if the emulator dies without cleaning up (SIGKILL).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Broker:
    """mosquitto on 127.0.0.1:`port` with TLS (and on each of `also`); state in `folder`."""

    def __init__(self, folder, port, pki, host="127.0.0.1", check_hostname=True, also=()):
        # The emulator's own clients check the chain always, and the name unless the
        # server certificate was made for other names on purpose (mismatch tests).
        self.check_hostname = check_hostname
        self.folder = folder
        self.port = port
        self.host = host
        self.also = tuple(also)
        self.pki = pki
        self.proc = None
        self.log_path = os.path.join(folder, "mosquitto.log")
        self.conf_path = os.path.join(folder, "mosquitto.conf")
        self.dynsec_path = os.path.join(folder, "dynamic-security.json")
        self.creds_path = os.path.join(folder, "service-credentials.json")
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, 0o700)
        self.admin_password, self.app_password = self._service_credentials()

    def _service_credentials(self):
        if os.path.exists(self.creds_path) and os.path.exists(self.dynsec_path):
            with open(self.creds_path) as f:
                kept = json.load(f)
            return kept["admin"], kept["app"]
        admin, app = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        self._write_dynsec(admin, app)
        fd = os.open(self.creds_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"admin": admin, "app": app}, f)
        return admin, app

    def _write_dynsec(self, admin_password, app_password):
        feed = "realer/iot/v1/devices/+/routes/+/feed-data"
        data = {
            "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                                 "subscribe": False, "unsubscribe": True},
            "clients": [
                dict(username=ADMIN_USER, textName="emulator admin", roles=[{"rolename": "admin"}],
                     **_password_entry(admin_password)),
                dict(username=APP_USER, textName="application ack service",
                     roles=[{"rolename": "application"}], **_password_entry(app_password)),
            ],
            "groups": [],
            "roles": [
                {"rolename": "admin", "acls": [
                    {"acltype": "publishClientSend", "topic": "$CONTROL/dynamic-security/#", "allow": True},
                    {"acltype": "publishClientReceive", "topic": "$CONTROL/dynamic-security/#", "allow": True},
                    {"acltype": "subscribePattern", "topic": "$CONTROL/dynamic-security/#", "allow": True},
                ]},
                {"rolename": "application", "acls": [
                    {"acltype": "subscribePattern", "topic": feed, "allow": True},
                    {"acltype": "publishClientSend", "topic": "realer/iot/v1/devices/+/acks", "allow": True},
                    {"acltype": "publishClientSend", "topic": "realer/iot/v1/devices/+/routes/+/desired",
                     "allow": True},
                ]},
            ],
        }
        fd = os.open(self.dynsec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)

    def _write_config(self):
        lines = [
            "# Written by tools/realer at every start; edits are lost.",
            "per_listener_settings false",
            "allow_anonymous false",
            "persistence true",
            "persistence_location %s/" % self.folder,
            "autosave_interval 5",
            "log_dest file %s" % self.log_path,
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            "set_tcp_nodelay true",
            "max_queued_messages 100000",
            "max_inflight_messages 32",
        ]
        for host in (self.host,) + self.also:  # TLS settings belong to each listener
            lines += [
                "listener %d %s" % (self.port, host),
                "protocol mqtt",
                "cafile %s" % self.pki["ca"],
                "certfile %s" % self.pki["cert"],
                "keyfile %s" % self.pki["key"],
                "tls_version tlsv1.2",
            ]
        lines += [
            "plugin %s" % find_plugin(),
            "plugin_opt_config_file %s" % self.dynsec_path,
        ]
        if os.geteuid() == 0:
            lines.insert(1, "user root")
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=10.0):
        if not shutil.which("mosquitto"):
            raise BrokerError("mosquitto is not installed; run ./deploy.sh setup")
        self._write_config()
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", self.conf_path], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_pdeathsig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip()
                raise BrokerError("mosquitto exited with %s: %s (log: %s)"
                                  % (self.proc.returncode, err or "no output", self.log_path))
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError("mosquitto did not listen on %s:%d within %.0f s" % (self.host, self.port, timeout))

    def stop(self, timeout=5.0):
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self):
        self.stop()
        self.start()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None


def tls_context(ca_path, check_hostname=True):
    ctx = ssl.create_default_context(cafile=ca_path)
    ctx.check_hostname = check_hostname
    return ctx


def service_client(client_id, username, password, ca_path, clean_session=True, check_hostname=True):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv311, clean_session=clean_session)
    c.username_pw_set(username, password)
    c.tls_set_context(tls_context(ca_path, check_hostname))
    c.reconnect_delay_set(0.1, 2)
    return c


class DynSec:
    """Request/response over the dynamic-security control topic, from any thread."""

    def __init__(self, broker, timeout=5.0):
        self.broker = broker
        self.timeout = timeout
        self._pending = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = service_client("realer-admin-" + uuid.uuid4().hex[:8], ADMIN_USER,
                                     broker.admin_password, broker.pki["ca"],
                                     check_hostname=broker.check_hostname)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self._ready.clear()
        self.client.on_message = self._on_message

    def start(self):
        self.client.connect_async("localhost", self.broker.port, keepalive=30)
        self.client.loop_start()
        if not self._ready.wait(self.timeout):
            raise BrokerError("could not connect to the broker as the admin client")

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, rc, props=None):
        if rc == 0:
            client.subscribe(DYNSEC_TOPIC + "/response", qos=1)
            self._ready.set()

    def _on_message(self, client, userdata, msg):
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        for resp in data.get("responses", []):
            waiter = self._pending.get(resp.get("correlationData"))
            if waiter:
                waiter[1].append(resp)
                waiter[0].set()

    def command(self, name, **fields):
        """Run one command; return its response, raise BrokerError on failure."""
        if not self._ready.wait(self.timeout):
            raise BrokerError("broker admin link is down")
        corr = uuid.uuid4().hex
        ev, box = threading.Event(), []
        with self._lock:
            self._pending[corr] = (ev, box)
        try:
            cmd = dict(fields, command=name, correlationData=corr)
            self.client.publish(DYNSEC_TOPIC, json.dumps({"commands": [cmd]}), qos=1)
            if not ev.wait(self.timeout):
                raise BrokerError("no answer from the broker to %s" % name)
        finally:
            with self._lock:
                self._pending.pop(corr, None)
        resp = box[0]
        if resp.get("error"):
            raise BrokerError("%s: %s" % (name, resp["error"]))
        return resp

    def add_credential(self, username, password, client_id, acls):
        role = "cred-" + username
        self.command("createRole", rolename=role, acls=acls)
        self.command("createClient", username=username, password=password, clientid=client_id,
                     roles=[{"rolename": role}])

    def remove_credential(self, username):
        """Delete the client (this kicks its live session) and its role. Idempotent."""
        for name, fields in (("deleteClient", {"username": username}),
                             ("deleteRole", {"rolename": "cred-" + username})):
            try:
                self.command(name, **fields)
            except BrokerError as exc:
                if "not found" not in str(exc).lower():
                    raise
