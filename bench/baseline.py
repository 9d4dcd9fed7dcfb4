"""Baselines measured from CPython in the same run: the same bootstrap with httpx and paho,
a paho subscriber on a desired topic, and the raw MQTT publish loop on the unix port."""
import json
import os
import queue
import ssl
import subprocess
import time

import httpx
import paho.mqtt.client as mqtt

from bench.common import ALL_SCOPES, BENCH, ROOT, micropython


class Paho:
    """A paho MQTT 3.1.1 client over TLS with a device credential; messages stamped with time.time()."""

    def __init__(self, cloud, cred):
        self.messages = queue.Queue()
        self.connack = queue.Queue()
        self.subacks = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cred["mqtt_client_id"],
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.username_pw_set(cred["mqtt_username"], cred["mqtt_credential"])
        c.tls_set_context(ssl.create_default_context(cafile=cloud.ca))
        c.on_connect = lambda cl, u, f, rc, p=None: self.connack.put(rc)
        c.on_subscribe = lambda cl, u, mid, rcs, p=None: self.subacks.put(rcs)
        c.on_message = lambda cl, u, m: self.messages.put((time.time(), m.topic, m.payload))
        self.client = c
        c.connect("localhost", cloud.mqtt_port, keepalive=30)
        c.loop_start()
        self.connack.get(timeout=10)

    def subscribe(self, topic):
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=10)

    def wait(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            t, topic, payload = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if pred(topic, payload):
                return t, topic, payload

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def bootstrap(cloud, device):
    """token -> catalog -> credential with httpx (a fresh client: its own TLS handshake).
    Returns (stage seconds, catalog, credential)."""
    c = cloud.client(device)
    t = [time.monotonic()]
    with httpx.Client(base_url=cloud.info["api_url"], timeout=15,
                      verify=ssl.create_default_context(cafile=cloud.ca)) as api:
        r = api.post("/oauth/token", data={"grant_type": "client_credentials", "scope": ALL_SCOPES},
                     auth=(c["client_id"], c["client_secret"]))
        r.raise_for_status()
        hdr = {"Authorization": "Bearer " + r.json()["access_token"]}
        t.append(time.monotonic())
        r = api.get("/iot/v1/devices/%d/mqtt" % c["device_id"], headers=hdr)
        r.raise_for_status()
        catalog = r.json()
        t.append(time.monotonic())
        r = api.post("/iot/v1/mqtt-credentials", json=catalog["mqtt"]["credential_endpoint"]["body"],
                     headers=hdr)
        r.raise_for_status()
        cred = r.json()["mqtt"]
        t.append(time.monotonic())
    return [b - a for a, b in zip(t, t[1:])], catalog, cred


def feed_topic(catalog, name):
    return next(r["mqtt"]["feed_data_topic"] for r in catalog["mqtt_routes"] if r["name"] == name)


def desired_topic(catalog, name):
    return next(r["mqtt"]["desired_topic"] for r in catalog["mqtt_routes"] if r["name"] == name)


def cpython_boot(cloud, device):
    """The firmware's boot stages done by CPython (httpx + paho): seconds per stage."""
    t0 = time.monotonic()
    stages, catalog, cred = bootstrap(cloud, device)
    t1 = time.monotonic()
    p = Paho(cloud, cred)
    p.subscribe(catalog["mqtt"]["feed_data_ack_topic"])
    t2 = time.monotonic()
    mid = "cpy-%d" % int(time.time() * 1000)
    p.client.publish(feed_topic(catalog, "temperature"), json.dumps(
        {"message_id": mid, "value": 21.5, "value_received_at": "2026-11-21T21:00:00.000Z"}), qos=1)
    p.wait(lambda t, pl: mid.encode() in pl)
    t3 = time.monotonic()
    p.close()
    return {"token": stages[0], "catalog": stages[1], "credential": stages[2],
            "connect": t2 - t1, "first_ack": t3 - t2, "total": t3 - t0}


def raw_publish(cloud, device, n, form, mpy_dir, folder, wrapper="bench_raw", extra_path=(), **opts):
    """A publish loop on the unix port (bench/mp/<wrapper>.py, reading <wrapper>.json):
    messages per second. bench_raw: the firmware's own MQTTClient; bench_umqtt: stock
    umqtt.simple (extra_path holds it; opts: nodelay)."""
    _, catalog, cred = bootstrap(cloud, device)
    os.makedirs(folder, exist_ok=True)
    conf = {"ca": cloud.info["ca_der"], "host": "localhost", "port": cloud.mqtt_port,
            "client_id": cred["mqtt_client_id"], "username": cred["mqtt_username"],
            "password": cred["mqtt_credential"], "topic": feed_topic(catalog, "temperature"),
            "prefix": "%s%d" % (wrapper, int(time.time() * 1000)), "n": n}
    conf.update(opts)
    with open(os.path.join(folder, wrapper[6:] + ".json"), "w") as f:
        json.dump(conf, f)
    with open(os.path.join(folder, "raw_main.py"), "w") as f:
        f.write("import %s\n" % wrapper)
    path = ":".join(((".frozen", mpy_dir) if form == "mpy" else (
        ".frozen", ROOT, os.path.join(ROOT, "lib"), os.path.join(BENCH, "mp"))) + tuple(extra_path))
    r = subprocess.run([micropython(), "raw_main.py"], cwd=folder, capture_output=True, text=True,
                       env=dict(os.environ, MICROPYPATH=path), timeout=300)
    for line in r.stdout.splitlines():
        if line.startswith("bench: {"):
            d = json.loads(line[7:])
            return {"n": d["raw_n"], "seconds": d["raw_us"] / 1e6, "rate": d["raw_n"] / (d["raw_us"] / 1e6)}
    raise RuntimeError("%s failed:\n%s%s" % (wrapper, r.stdout[-2000:], r.stderr[-2000:]))


# Stock umqtt.simple as a user gets it from PyPI (the newest there: 1.3.4, 2018; the ESP32
# firmware freezes 1.7.0, whose publish path is the same: header, topic, packet id and
# payload in separate writes, then a blocking read until PUBACK). Fetched at bench time
# into build/ (git-ignored), checked against its sha256, never committed.
UMQTT_URL = ("https://files.pythonhosted.org/packages/bd/cf/697e3418b2f44222b3e848078b1e33ee76aedca9b6c2"
             "430ca1b1aec1ce1d/micropython-umqtt.simple-1.3.4.tar.gz")
UMQTT_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"


def fetch_umqtt(cache=os.path.join(ROOT, "build", "bench-cache")):
    """The folder holding umqtt/simple.py (downloaded once), or raise OSError/ValueError."""
    import hashlib
    import io
    import tarfile
    out = os.path.join(cache, "umqtt-1.3.4")
    if os.path.exists(os.path.join(out, "umqtt", "simple.py")):
        return out
    data = httpx.get(UMQTT_URL, timeout=30, follow_redirects=True).raise_for_status().content
    if hashlib.sha256(data).hexdigest() != UMQTT_SHA256:
        raise ValueError("umqtt.simple download does not match its sha256")
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        m = next(m for m in t.getmembers() if m.name.endswith("/umqtt/simple.py"))
        src = t.extractfile(m).read()
    os.makedirs(os.path.join(out, "umqtt"), exist_ok=True)
    with open(os.path.join(out, "umqtt", "simple.py"), "wb") as f:
        f.write(src)
    return out


def umqtt_publish(cloud, device, n, folder, nodelay):
    """Stock umqtt.simple on the unix port, QoS 1 in sequence, TLS (bench/mp/ussl.py)."""
    return raw_publish(cloud, device, n, "py", None, folder, wrapper="bench_umqtt",
                       extra_path=(fetch_umqtt(),), nodelay=nodelay)
