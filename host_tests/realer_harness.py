"""Test harness for the local Realer cloud: start it, bootstrap a device, speak MQTT.

Used by the contract tests; the firmware's end-to-end tests use it too.
Everything is real: the emulator runs as its own process (mosquitto under it),
HTTPS is verified against the emulator's CA, and MQTT is paho over TLS.
"""
import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time

import httpx
import paho.mqtt.client as mqtt

from tools import proc
from tools.proc import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_SCOPES = ("iot:catalog:read iot:mqtt:connect iot:mqtt:ack:read "
              "iot:mqtt:feed-data:write iot:mqtt:desired:read")


class RunningCloud:
    """`python -m tools.realer serve` as a child process on free ports."""

    def __init__(self, state, *extra, start_timeout=20):
        self.state = str(state)
        self.http_port, self.mqtt_port = free_port(), free_port()
        self.output = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.realer", "--state", self.state, "serve",
             "--http-port", str(self.http_port), "--mqtt-port", str(self.mqtt_port), *extra],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.started_in = self.wait_for("realer: ready", start_timeout)
        with open(os.path.join(self.state, "run.json")) as f:
            self.info = json.load(f)
        self.ca = self.info["ca"]
        self.api = httpx.Client(base_url=self.info["api_url"], verify=ssl.create_default_context(
            cafile=self.ca), timeout=15)

    def _pump(self):
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text, timeout):
        """Seconds until a line containing `text` appears on the emulator's output."""
        t0 = time.monotonic()
        while True:
            left = timeout - (time.monotonic() - t0)
            try:
                line = self._lines.get(timeout=max(0.01, left))
            except queue.Empty:
                line = ""
            if line is None or left <= 0:
                raise RuntimeError("emulator never printed %r; output:\n%s" % (text, "\n".join(self.output)))
            if text in line:
                return time.monotonic() - t0

    # --- admin -------------------------------------------------------
    def admin(self, method, path, body=None, expect=200):
        r = self.api.request(method, path, json=body,
                             headers={"Authorization": "Bearer " + self.info["admin_token"]})
        assert r.status_code == expect, (r.status_code, r.text)
        return r.json()

    def desired(self, route, value, valid_for=60, device_id=None, **extra):
        body = dict(extra, route=route, value=value, valid_for=valid_for)
        if device_id is not None:
            body["device_id"] = device_id
        return self.admin("POST", "/admin/desired", body)

    def fault(self, target, **knobs):
        return self.admin("POST", "/admin/faults", dict(knobs, target=target))

    def clear_faults(self):
        return self.admin("DELETE", "/admin/faults")

    # --- device side -------------------------------------------------
    def client(self, index=0):
        d = self.info["devices"][index]
        return d["client_id"], d["client_secret"], d["device_id"]

    def token(self, index=0, scope=ALL_SCOPES):
        cid, secret, _ = self.client(index)
        r = self.api.post("/oauth/token", data={"grant_type": "client_credentials", "scope": scope},
                          auth=(cid, secret))
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def bootstrap(self, index=0, scope=ALL_SCOPES, cred_scopes=None):
        """token -> catalog -> credential; returns (token, catalog, credential)."""
        tok = self.token(index, scope)
        hdr = {"Authorization": "Bearer " + tok}
        device_id = self.client(index)[2]
        r = self.api.get("/iot/v1/devices/%d/mqtt" % device_id, headers=hdr)
        assert r.status_code == 200, r.text
        catalog = r.json()
        body = dict(catalog["mqtt"]["credential_endpoint"]["body"])
        if cred_scopes is not None:
            body["scopes"] = list(cred_scopes)
        r = self.api.post("/iot/v1/mqtt-credentials", json=body, headers=hdr)
        assert r.status_code == 201, r.text
        return tok, catalog, r.json()["mqtt"]

    def mqtt(self, cred, ca=None, connect=True):
        return Device(self, cred, ca or self.ca, connect)

    def ledger(self, sql, args=()):
        return proc.ledger(self.info["ledger"], sql, args)

    # --- life cycle ---------------------------------------------------
    def stop(self, sig=signal.SIGTERM, timeout=10):
        self.api.close()
        return proc.stop(self.proc, sig, timeout)


def mosquitto_pids(state):
    """Live mosquitto processes whose command line names this state folder."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"mosquitto" and any(
                str(state).encode() in a for a in argv):
            found.append(int(pid))
    return found


class Device:
    """A paho MQTT 3.1.1 client over TLS with the returned CONNECT tuple."""

    def __init__(self, cloud, cred, ca, connect=True):
        self.cloud = cloud
        self.cred = cred
        self.messages = queue.Queue()
        self.subacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.connack = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cred["mqtt_client_id"],
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.username_pw_set(cred["mqtt_username"], cred["mqtt_credential"])
        ctx = ssl.create_default_context(cafile=ca)
        c.tls_set_context(ctx)
        c.on_connect = lambda cl, u, f, rc, p=None: self.connack.put(rc.value if hasattr(rc, "value") else rc)
        c.on_message = lambda cl, u, m: self.messages.put((m.topic, m.payload))
        c.on_subscribe = lambda cl, u, mid, rcs, p=None: self.subacks.put(
            [r.value if hasattr(r, "value") else r for r in rcs])
        c.on_disconnect = lambda cl, u, f, rc, p=None: self.disconnects.put(
            rc.value if hasattr(rc, "value") else rc)
        self.client = c
        if connect:
            self.connect()

    def connect(self, timeout=10):
        """Connect; return the CONNACK code (0 = accepted)."""
        self.client.connect("localhost", self.cloud.mqtt_port, keepalive=30)
        self.client.loop_start()
        return self.connack.get(timeout=timeout)

    def subscribe(self, topic, timeout=10):
        """Return the SUBACK return code for one topic (0x80 = refused)."""
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=timeout)[0]

    def publish(self, topic, payload, timeout=10):
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        return info

    def next_message(self, topic=None, timeout=10):
        """The next message (on `topic` if given) as (topic, payload bytes)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message%s within %s s" % (" on " + topic if topic else "", timeout))
            t, p = self.messages.get(timeout=left)
            if topic is None or t == topic:
                return t, p

    def next_json(self, topic=None, timeout=10):
        return json.loads(self.next_message(topic, timeout)[1])

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def feed(message_id, value, at="2026-11-21T21:00:00.000Z", **extra):
    return dict(extra, message_id=message_id, value=value, value_received_at=at)
