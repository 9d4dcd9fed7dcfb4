"""What every measurement shares: the local cloud as a child process, the firmware on the
unix port with a bench wrapper main, and small statistics helpers.

Everything runs on free ports in a temporary state folder; `stop()` ends what was started.
"""
import json
import os
import queue
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time

import httpx

from tools import proc
from tools.proc import free_port, micropython
from tools.provision import provision, read_output, write_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
FLEET = os.path.join(BENCH, "fleet.json")
ALL_SCOPES = ("iot:catalog:read iot:mqtt:connect iot:mqtt:ack:read "
              "iot:mqtt:feed-data:write iot:mqtt:desired:read")
# bench/fleet.json: four gateways of 8 routes (6 sensors, 2 boolean commands), "a".."d";
# fleet() adds copies of "a" as "e".."p" for the heap probes that run side by side.
DEVICES = {L: 20001 + i for i, L in enumerate("abcdefghijklmnop")}


def fleet(path):
    """bench/fleet.json with gateways "e".."p" (copies of "a") added; written to `path`."""
    with open(FLEET) as f:
        d = json.load(f)
    a, ca = d["devices"][0], d["clients"][0]
    for L in "efghijklmnop":
        dev = json.loads(json.dumps(a).replace("rte_a", "rte_" + L).replace("bencha", "bench" + L)
                         .replace('"bench-a"', '"bench-%s"' % L))
        dev["id"] = DEVICES[L]
        d["devices"].append(dev)
        d["clients"].append(dict(ca, client_id="bench-" + L, device_id=DEVICES[L]))
    with open(path, "w") as f:
        json.dump(d, f)
    return path
SENSORS = {"temperature": (10, 40), "humidity": (20, 80), "pressure": (950, 1050),
           "voltage": (10, 14), "door": None, "motion": None}
COMMANDS = ("relay", "fan")


def say(msg):
    print("bench: %s" % msg, flush=True)


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100 * len(v) + 0.5)) - 1))
    return v[k]


class Cloud:
    """`python -m tools.realer serve --fleet bench/fleet.json` on free ports."""

    def __init__(self, state):
        self.state = state
        self.http_port, self.mqtt_port = free_port(), free_port()
        os.makedirs(state, exist_ok=True)
        fleet_file = fleet(os.path.join(os.path.dirname(os.path.abspath(state)), "fleet.json"))
        self.lines = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.realer", "--state", state, "serve", "--quiet",
             "--http-port", str(self.http_port), "--mqtt-port", str(self.mqtt_port),
             "--fleet", fleet_file],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.output = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 30
        while not any("realer: ready" in x or "local Realer cloud is up" in x for x in self.output):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: the local cloud did not start:\n" + "\n".join(self.output))
            time.sleep(0.05)
        while not os.path.exists(os.path.join(state, "run.json")):
            time.sleep(0.05)
        with open(os.path.join(state, "run.json")) as f:
            self.info = json.load(f)
        self.ca = self.info["ca"]
        self.api = httpx.Client(base_url=self.info["api_url"], timeout=30,
                                verify=ssl.create_default_context(cafile=self.ca))
        self._lock = threading.Lock()  # the heap probes call from two threads

    def _pump(self):
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))

    def admin(self, method, path, body=None):
        with self._lock:
            r = self.api.request(method, path, json=body,
                                 headers={"Authorization": "Bearer " + self.info["admin_token"]})
        if r.status_code != 200:
            raise RuntimeError("admin %s %s: %s %s" % (method, path, r.status_code, r.text))
        return r.json()

    def desired(self, device, route, value, valid_for=30):
        return self.admin("POST", "/admin/desired", {"device_id": DEVICES[device], "route": route,
                                                     "value": value, "valid_for": valid_for})

    def client(self, device):
        return next(d for d in self.info["devices"] if d["device_id"] == DEVICES[device])

    def ledger(self, sql, args=()):
        return proc.ledger(self.info["ledger"], sql, args)

    def mosquitto_pid(self):
        """The emulator's mosquitto (a child of the cloud we started), by its config path."""
        me = str(self.proc.pid)
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    argv = f.read().split(b"\0")
                with open("/proc/%s/stat" % pid) as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) == b"mosquitto" and ppid == me:
                return int(pid)
        return None

    def stop(self):
        self.api.close()
        proc.stop(self.proc, signal.SIGTERM, 15)


class Firmware:
    """The gateway on the unix port with a bench wrapper as main; log lines with host times.

    form: "py" (the repo's sources) or "mpy" (tools.build output in `mpy_dir`).
    wrapper: the bench module that starts firmware.app.main() (bench_mem or bench_probe).
    """

    def __init__(self, cloud, device, flash, form="py", mpy_dir=None, heap=None,
                 wrapper="bench_probe", options=None):
        self.cloud, self.device, self.flash = cloud, device, flash
        self.form, self.mpy_dir, self.heap, self.wrapper = form, mpy_dir, heap, wrapper
        shutil.rmtree(flash, ignore_errors=True)
        os.makedirs(flash)
        self.config = provision(flash, cloud.state, device_id=DEVICES[device], interval=10)
        with open(os.path.join(flash, "bench.json"), "w") as f:
            json.dump(options or {}, f)
        self.set_phase("boot")
        self.lines = []  # (host monotonic, text)
        self._q = queue.Queue()
        self.proc = None
        self.t_start = None

    def start(self):
        if self.form == "mpy":
            path = ":".join((".frozen", self.mpy_dir))
        else:
            path = ":".join((".frozen", ROOT, os.path.join(ROOT, "lib"), os.path.join(BENCH, "mp")))
        main = os.path.join(self.flash, "bench_main.py")
        with open(main, "w") as f:
            f.write("import %s\n" % self.wrapper)
        cmd = [micropython()] + (["-X", "heapsize=" + self.heap] if self.heap else []) + [main]
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.flash, env=dict(os.environ, MICROPYPATH=path),
                                     text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self):
        for line in self.proc.stdout:
            item = (time.monotonic(), line.rstrip("\n"))
            self.lines.append(item)
            self._q.put(item)
        self._q.put(None)

    def wait_log(self, pattern, timeout=30):
        """(host time, line) of the next new line matching `pattern`; None on timeout or exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                item = self._q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if item is None:
                self._q.put(None)
                return None
            if rx.search(item[1]):
                return item

    def text(self):
        return "\n".join(t for _, t in self.lines)

    def set_phase(self, phase):
        """The wrapper polls `bench.phase` every 100 ms and prints its counters on a change."""
        path = os.path.join(self.flash, "bench.phase")
        with open(path + ".tmp", "w") as f:
            f.write(phase)
        os.replace(path + ".tmp", path)

    def set_input(self, name, value):
        write_input(self.flash, name, value)

    def output(self, name):
        return read_output(self.flash, name)

    def marks(self):
        """The wrapper's `bench: {json}` lines, parsed."""
        out = []
        for _, t in self.lines:
            i = t.find("bench: {")
            if i >= 0:
                try:
                    out.append(json.loads(t[i + 7:]))
                except ValueError:
                    pass
        return out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGINT):
        return proc.stop(self.proc, sig, 15)


class Stimulus(threading.Thread):
    """Every second: a new reading on every sensor; every `command_every` s: a relay command."""

    def __init__(self, fw, command_every=5):
        super().__init__(daemon=True)
        self.fw, self.every = fw, command_every
        self.halt = threading.Event()
        self.commands = []

    def run(self):
        i = 0
        while not self.halt.wait(1.0):
            i += 1
            for name, rng in SENSORS.items():
                if rng is None:
                    v = i % 2 == 0
                else:
                    lo, hi = rng
                    v = lo + (i * 7 % 30) * (hi - lo) / 30.0
                self.fw.set_input(name, round(v, 2))
            if self.every and i % self.every == 0:
                try:
                    self.commands.append(self.fw.cloud.desired(
                        self.fw.device, COMMANDS[(i // self.every) % 2], (i // self.every) % 4 < 2))
                except Exception as e:  # noqa: BLE001 - a failed admin call is a probe result, not a crash
                    self.commands.append({"error": str(e)})

    def stop(self):
        self.halt.set()
        self.join(5)
