"""Run the ugate firmware on the MicroPython unix port against a RunningCloud.

    fw = Firmware(cloud, tmp_path / "flash")       # provisions config, secrets, CA
    fw.start(); fw.wait_log("mqtt: connected")
    fw.set_input("temperature", 23.5)              # virtual/<name>.in
    fw.output("relay")                             # virtual/<name>.out
    fw.stop()                                      # SIGINT: intentional shutdown (revoke)

`wrap` prefixes the command, e.g. ["ip", "netns", "exec", "ns1"] to run the
firmware in another network namespace (it must exec the firmware, so that
`proc` and its signals are the firmware's own).

The firmware's own log lines are collected in `lines`; every test reads them
and the cloud's ledger, never the firmware's internals.
"""
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time

import mp
from tools import proc
from tools.provision import provision, read_output, write_input


class Firmware:
    def __init__(self, cloud, flash, heap=None, mpy_dir=None, wrap=(), **provision_args):
        self.cloud = cloud
        self.flash = str(flash)
        self.heap = heap
        self.mpy_dir = mpy_dir
        self.wrap = list(wrap)
        os.makedirs(self.flash, exist_ok=True)
        self.config = provision(self.flash, cloud.state, **provision_args)
        self.route_ids = {r["name"]: rid for rid, r in self.config["routes"].items()}
        self.proc = None
        self.lines = []
        self._q = queue.Queue()

    def edit_config(self, fn):
        path = os.path.join(self.flash, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        fn(cfg)
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.config = cfg

    def start(self, power_on=False):
        """Start (or start again: a reboot) the firmware; `lines` holds this run's log.
        power_on: this boot follows a power cut (the virtual board's reset cause says
        power-on); otherwise it looks like a reset, as after a crash."""
        cause = os.path.join(self.flash, "virtual", "reset_cause")
        if power_on:
            os.makedirs(os.path.dirname(cause), exist_ok=True)
            with open(cause, "w") as f:
                f.write("power")
        elif os.path.exists(cause):
            os.remove(cause)
        self.lines = []
        self._q = queue.Queue()
        cmd = self.wrap + [mp.binary()]
        if self.heap:
            cmd += ["-X", "heapsize=" + self.heap]
        env = dict(os.environ, MICROPYPATH=mp.path() if self.mpy_dir is None else ":".join(
            (".frozen", self.mpy_dir)))
        main = os.path.join(mp.ROOT if self.mpy_dir is None else self.mpy_dir, "main.py")
        self.proc = subprocess.Popen(cmd + [main], cwd=self.flash, env=env, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        # The pump gets this run's pipe, list and queue: after a restart, the old run's
        # pump must not feed (or end) the new run's queue.
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines, self._q),
                         daemon=True).start()
        return self

    @staticmethod
    def _pump(stream, lines, q):
        for line in stream:
            line = line.rstrip("\n")
            lines.append(line)
            q.put(line)
        q.put(None)

    def wait_log(self, pattern, timeout=30):
        """The first new log line matching regex `pattern` (waits up to `timeout` s)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._q.get(timeout=max(0.01, left))
            except queue.Empty:
                line = ""
            if line is None:
                raise AssertionError("firmware exited (%s) before %r; log:\n%s" % (
                    self.proc.poll(), pattern, self.log()))
            if rx.search(line):
                return line
            if left <= 0:
                raise AssertionError("no log line %r within %s s; log:\n%s" % (pattern, timeout, self.log()))

    def find(self, start, pattern, timeout=10):
        """(index, line) of the first line of `lines` from index `start` on that matches
        regex `pattern`, waiting up to `timeout` s (unlike wait_log, earlier lines count)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.lines):
                if rx.search(self.lines[i]):
                    return i, self.lines[i]
                i += 1
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the pump thread collect the last lines
                raise AssertionError("firmware exited (%s) before %r; log:\n%s" % (
                    self.proc.poll(), pattern, self.log(80)))
            if time.monotonic() > deadline:
                raise AssertionError("no line %r within %s s; log:\n%s" % (pattern, timeout, self.log(60)))
            time.sleep(0.01)

    def wait_answer(self, desired_id, timeout=30):
        """Wait until the firmware's answer to `desired_id` is acked; returns the ack line.
        (Other relay messages, such as the boot level, come and go meanwhile.)"""
        line = self.wait_log(r'publish: \S+ \{.*"desired_id": "%s"' % re.escape(desired_id), timeout)
        mid = re.search(r'"message_id": "([^"]+)"', line).group(1)
        return self.wait_log(r"ack: \S+ \w+ message_id=%s " % re.escape(mid), timeout)

    def log(self, last=60):
        return "\n".join(self.lines[-last:])

    def set_input(self, name, value):
        write_input(self.flash, name, value)

    def output(self, name):
        return read_output(self.flash, name)

    def published(self):
        """message_ids the firmware logged as published, in order, with repeats."""
        return re.findall(r'publish: \S+ \{.*?"message_id": "([^"]+)"', "\n".join(self.lines))

    def stop(self, sig=signal.SIGINT, timeout=15):
        return proc.stop(self.proc, sig, timeout)
