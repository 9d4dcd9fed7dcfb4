"""One firmware session (bench_probe wrapper, default heap) that yields, in order:
boot stages, loop lag in steady state, command latency (beside the broker's own
publish -> subscribe), an acked burst, loop lag through a broker restart, and flash
writes while offline. Then `boot_only` for the other firmware form."""
import os
import re
import signal
import time

from bench import baseline
from bench.common import Stimulus, percentile, say

_GAP = 0.1
_OFFLINE_HOLD = 6
_T = re.compile(r"^\s*(\d+)\.(\d{3}) ")
BOOT_STAGES = (  # (stage, log pattern that ends it)
    ("token", r"bootstrap: token ok"),
    ("catalog", r"bootstrap: catalog ok"),
    ("credential", r"bootstrap: credential"),
    ("tls_connect", r"mqtt: connected"),
    ("first_ack", r"ack: \S+ accepted"),
)


def _fw_time(line):
    m = _T.match(line)
    return int(m.group(1)) + int(m.group(2)) / 1000 if m else None


def boot_stages(fw, timeout=60):
    """Seconds per boot stage from the firmware's own log timestamps (seconds since boot);
    `start` (process start -> the boot line) from host time."""
    boot = fw.wait_log(r" boot: ugate", timeout)
    if boot is None:
        raise RuntimeError("no boot line:\n" + fw.text())
    out = {"start": boot[0] - fw.t_start}
    prev = _fw_time(boot[1])
    for name, pattern in BOOT_STAGES:
        item = fw.wait_log(pattern, timeout)
        if item is None:
            raise RuntimeError("boot stage %s never ended:\n%s" % (name, fw.text()[-3000:]))
        t = _fw_time(item[1])
        out[name] = t - prev
        prev = t
    out["total"] = sum(out.values())
    return out


def boot_only(fw):
    fw.start()
    try:
        return boot_stages(fw)
    finally:
        fw.stop()


def _wait(pred, timeout, step=0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


def _mark(fw, key, value, timeout=60):
    """The wrapper's `bench: {...}` line with marks[key] == value."""
    found = _wait(lambda: next((m for m in fw.marks() if m.get(key) == value), None), timeout, 0.05)
    if found is None:
        raise RuntimeError("no bench mark %s=%s:\n%s" % (key, value, fw.text()[-3000:]))
    return found


def _phase(fw, name):
    fw.set_phase(name)
    time.sleep(0.3)  # the wrapper looks every 100 ms


def latency(fw, cloud, sub, sub_topic, n):
    """n relay commands to the firmware, each followed by one to the paho subscriber."""
    led = cloud.ledger
    relay, ack, broker, admin, admin_b = [], [], [], [], []
    for k in range(n):
        v = k % 2 == 0
        # Idle sockets before each command: back to back, the emulator's own paho client
        # (no TCP_NODELAY) can hold a publish for a delayed ACK (~40 ms) after its last write.
        time.sleep(_GAP)
        d = cloud.desired(fw.device, "relay", v)
        t_ret = time.time()
        t1 = _wait(lambda: fw.output("relay") == v and time.time(), 5)
        row = _wait(lambda: led("SELECT published_at, acked_at FROM desired WHERE desired_id=? AND acked_at"
                                " IS NOT NULL", (d["desired_id"],)), 5, 0.005)
        if t1 is None or not row:
            raise RuntimeError("command %d: relay or ack missing:\n%s" % (k, fw.text()[-3000:]))
        pub, acked = row[0]
        relay.append(t1 - pub)
        ack.append(acked - pub)
        admin.append(t_ret - pub)
        time.sleep(_GAP)
        b = cloud.desired("b", "relay", v)
        tb_ret = time.time()
        t_recv, _, _ = sub.wait(lambda t, p, i=b["desired_id"]: t == sub_topic and i.encode() in p, 5)
        bpub = led("SELECT published_at FROM desired WHERE desired_id=?", (b["desired_id"],))[0][0]
        broker.append(t_recv - bpub)
        admin_b.append(tb_ret - bpub)

    def st(v):
        return {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99), "max": max(v)}
    return {"relay": st(relay), "ack": st(ack), "broker": st(broker), "admin_return": st(admin),
            "admin_return_b": st(admin_b), "gap_s": _GAP}


def run(cloud, fw, commands=50, burst=1000, steady_s=10):
    res = {}
    fw.start()
    res["boot"] = boot_stages(fw)
    say("boot to first ack: %.3f s" % res["boot"]["total"])
    stim = Stimulus(fw, command_every=0)
    stim.start()
    time.sleep(1)
    _phase(fw, "steady")
    time.sleep(steady_s)

    stim.stop()  # commands on an otherwise quiet gateway
    _, cat_b, cred_b = baseline.bootstrap(cloud, "b")
    sub = baseline.Paho(cloud, cred_b)
    sub_topic = baseline.desired_topic(cat_b, "relay")
    sub.subscribe(sub_topic)
    _phase(fw, "latency")
    try:
        res["latency"] = latency(fw, cloud, sub, sub_topic, commands)
    finally:
        sub.close()
    say("command latency p50: relay %.1f ms, ack %.1f ms; broker alone %.1f ms" % (
        res["latency"]["relay"]["p50"] * 1000, res["latency"]["ack"]["p50"] * 1000,
        res["latency"]["broker"]["p50"] * 1000))
    time.sleep(1)

    _phase(fw, "burst:%d" % burst)
    res["burst"] = _mark(fw, "burst", "online", 120)
    say("burst: %d acked in %.2f s" % (burst, res["burst"]["settled_ms"] / 1000))

    _phase(fw, "pre_reconnect")
    time.sleep(1)
    connected = len(re.findall(r"mqtt: connected", fw.text()))
    _phase(fw, "reconnect")
    t0 = time.monotonic()
    cloud.admin("POST", "/admin/broker/restart")
    _wait(lambda: len(re.findall(r"mqtt: connected", fw.text())) > connected, 60, 0.01)
    res["reconnect_s"] = time.monotonic() - t0
    time.sleep(1)
    _phase(fw, "post_reconnect")
    time.sleep(1)

    # Offline: the emulator's mosquitto (a child of the cloud this bench started) is stopped.
    down = len(re.findall(r"mqtt: down", fw.text()))
    pid = cloud.mosquitto_pid()
    if pid is None:
        raise RuntimeError("no mosquitto child of the cloud found")
    os.kill(pid, signal.SIGTERM)
    _wait(lambda: len(re.findall(r"mqtt: down", fw.text())) > down, 30, 0.01)
    _phase(fw, "offline:%d" % burst)
    res["offline"] = _mark(fw, "burst", "offline", 120)
    time.sleep(_OFFLINE_HOLD)  # offline a while: the outbox may spill to flash (at most every 5 s)
    _phase(fw, "end")
    cloud.admin("POST", "/admin/broker/restart")  # back, so the shutdown can leave and revoke
    _wait(lambda: len(re.findall(r"mqtt: connected", fw.text())) > connected + 1, 20, 0.05)
    _phase(fw, "after")
    time.sleep(0.2)
    fw.stop()
    res["phases"] = {m["phase"]: m for m in fw.marks() if "phase" in m}
    res["errors"] = [t for _, t in fw.lines if "Traceback" in t or "MemoryError" in t]
    return res


def idle_lag(form, mpy_dir, folder, seconds=5):
    """The ticker alone in an asyncio loop on the unix port: the floor of the loop-lag figures."""
    import json
    import subprocess
    from bench.common import BENCH, ROOT, micropython
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "idle.json"), "w") as f:
        json.dump({"seconds": seconds}, f)
    with open(os.path.join(folder, "idle_main.py"), "w") as f:
        f.write("import bench_idle\n")
    path = ":".join((".frozen", mpy_dir) if form == "mpy" else (
        ".frozen", ROOT, os.path.join(BENCH, "mp")))
    r = subprocess.run([micropython(), "idle_main.py"], cwd=folder, capture_output=True, text=True,
                       env=dict(os.environ, MICROPYPATH=path), timeout=60)
    for line in r.stdout.splitlines():
        if line.startswith("bench: {"):
            return json.loads(line[7:])["idle"]
    raise RuntimeError("idle ticker failed: %s %s" % (r.stdout[-1000:], r.stderr[-1000:]))
