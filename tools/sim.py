"""``./deploy.sh sim``: the gateway firmware on the MicroPython unix port against the local cloud.

Starts the local Realer cloud, provisions a demo device into a fresh flash
root (``flash/sim``), runs the firmware there, and plays a small scenario so
that something happens: the temperature drifts, the door opens and closes,
and every 20 s the cloud sends the relay a desired value. Every line is
prefixed with who said it (cloud, gateway, sim). Ctrl-C stops everything:
the firmware leaves the broker and revokes its token, then the cloud stops.
"""
import argparse
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

from tools import proc
from tools.proc import micropython
from tools.provision import DEFAULT_STATE, ROOT, provision, read_output, write_input


def firmware_env():
    return dict(os.environ, MICROPYPATH=":".join((".frozen", ROOT, os.path.join(ROOT, "lib"))))


def _pump(proc, prefix, ready=None, text=None):
    for line in proc.stdout:
        print("%s| %s" % (prefix, line.rstrip("\n")), flush=True)
        if ready is not None and text in line:
            ready.set()


class Sim:
    def __init__(self, state, flash, http_port, mqtt_port):
        self.state, self.flash = state, flash
        self.http_port, self.mqtt_port = http_port, mqtt_port
        self.cloud = self.gateway = None

    def start_cloud(self):
        self.cloud = subprocess.Popen(
            [sys.executable, "-m", "tools.realer", "--state", self.state, "serve",
             "--http-port", str(self.http_port), "--mqtt-port", str(self.mqtt_port)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL)
        ready = threading.Event()
        threading.Thread(target=_pump, args=(self.cloud, "cloud   ", ready, "realer: ready"),
                         daemon=True).start()
        t0 = time.monotonic()
        while not ready.wait(0.1):
            if self.cloud.poll() is not None or time.monotonic() - t0 > 20:
                raise SystemExit("sim: the local cloud did not start")
        with open(os.path.join(self.state, "run.json")) as f:
            self.info = json.load(f)

    def start_gateway(self):
        shutil.rmtree(self.flash, ignore_errors=True)
        os.makedirs(self.flash)
        cfg = provision(self.flash, self.state)
        print("sim     | provisioned %s: device %d with %d routes" % (
            self.flash, cfg["cloud"]["device_id"], len(cfg["routes"])), flush=True)
        self.routes = {r["name"]: rid for rid, r in cfg["routes"].items()}
        self.gateway = subprocess.Popen(
            [micropython(), os.path.join(ROOT, "main.py")], cwd=self.flash, env=firmware_env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        threading.Thread(target=_pump, args=(self.gateway, "gateway "), daemon=True).start()

    def desired(self, route, value, valid_for=30):
        ctx = ssl.create_default_context(cafile=self.info["ca"])
        req = urllib.request.Request(
            "https://localhost:%d/admin/desired" % self.http_port, method="POST",
            data=json.dumps({"route": route, "value": value, "valid_for": valid_for}).encode(),
            headers={"Authorization": "Bearer " + self.info["admin_token"],
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.loads(r.read())

    def set_input(self, name, value):
        write_input(self.flash, name, value)

    def output(self, name):
        return read_output(self.flash, name)

    def scenario(self, duration):
        t0 = time.monotonic()
        temp, door, relay, tick = 21.5, False, False, 0
        while duration is None or time.monotonic() - t0 < duration:
            time.sleep(1)
            tick += 1
            if self.gateway.poll() is not None:
                print("sim     | the firmware exited with %s" % self.gateway.returncode, flush=True)
                return 1
            if tick % 3 == 0 and "temperature" in self.routes:
                temp = round(max(-10, min(40, temp + random.uniform(-1.2, 1.2))), 1)
                self.set_input("temperature", temp)
            if tick % 17 == 0 and "door" in self.routes:
                door = not door
                self.set_input("door", door)
                print("sim     | door %s" % ("opened" if door else "closed"), flush=True)
            if tick % 20 == 10 and "relay" in self.routes:
                relay = not relay
                msg = self.desired("relay", relay)
                print("sim     | cloud sets relay desired=%s (seq %d); relay output now: %s" % (
                    json.dumps(relay), msg["sequence_number"], self.output("relay")), flush=True)
            if tick % 20 == 12 and "relay" in self.routes:
                print("sim     | relay output (virtual/relay.out): %s" % self.output("relay"), flush=True)
        return 0

    def stop(self):
        proc.stop(self.gateway, signal.SIGINT)  # intentional shutdown: revoke
        proc.stop(self.cloud, signal.SIGTERM)
        time.sleep(0.2)


def main(argv=None):
    p = argparse.ArgumentParser(prog="sim", description="ugate on the unix port against the local cloud")
    p.add_argument("--state", default=DEFAULT_STATE)
    p.add_argument("--flash", default=os.path.join(ROOT, "flash", "sim"))
    p.add_argument("--http-port", type=int, default=8443)
    p.add_argument("--mqtt-port", type=int, default=8883)
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    a = p.parse_args(argv)
    if not micropython():
        sys.exit("sim: no micropython binary; run ./deploy.sh setup")
    sim = Sim(a.state, a.flash, a.http_port, a.mqtt_port)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    rc = 0
    try:
        sim.start_cloud()
        sim.start_gateway()
        rc = sim.scenario(a.duration)
    except KeyboardInterrupt:
        print("sim     | stopping", flush=True)
    finally:
        sim.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
