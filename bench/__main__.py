"""``./deploy.sh bench``: measure the gateway firmware on the unix port against the local
Realer cloud over TLS; write bench/results/latest.md and latest.json.

    python -m bench [--stream 300] [--commands 50] [--burst 1000] [--raw 2000] [--skip-heap]

Every figure is reported beside its baseline measured in the same run. Nothing here
passes or fails: a benchmark reports. The cloud and every firmware run use free ports
and a temporary folder, and are stopped at the end.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import httpx

from bench import baseline, heap, report, session
from bench.common import BENCH, Cloud, Firmware, micropython, say
from tools.build import build, mpy_cross


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mp = subprocess.run([micropython(), "-c", "import sys; v = sys.implementation.version; "
                         "print('%d.%d.%d-%s (%s)' % (v[0], v[1], v[2], v[3], sys.version.split('; ')[-1]))"],
                        capture_output=True, text=True).stdout.strip()
    mq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": sys.version.split()[0],
            "micropython": mp, "mosquitto": mq[0] if mq else "?", "kernel": os.uname().release,
            "word_bits": 64}


def build_mpy(out):
    """tools.build's portable bytecode (no -march: the unix port), plus the bench wrappers."""
    build(out, quiet=True)
    for name in os.listdir(os.path.join(BENCH, "mp")):
        if name.endswith(".py"):
            subprocess.run([mpy_cross(), "-O2", name, "-o", os.path.join(out, name[:-3] + ".mpy")],
                           cwd=os.path.join(BENCH, "mp"), check=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    p.add_argument("--stream", type=float, default=300, help="seconds per heap probe (default 300)")
    p.add_argument("--heap-mpy", default="120:160", help="heap grid for .mpy, K from:to (8K steps)")
    p.add_argument("--heap-py", default="136:176", help="heap grid for .py, K from:to (8K steps)")
    p.add_argument("--commands", type=int, default=50, help="relay commands for the latency")
    p.add_argument("--burst", type=int, default=1000, help="readings in the acked burst")
    p.add_argument("--raw", type=int, default=2000, help="raw QoS 1 publishes (and umqtt.simple with TCP_NODELAY)")
    p.add_argument("--umqtt-nagle", type=int, default=200, help="umqtt.simple publishes with Nagle on")
    p.add_argument("--skip-heap", action="store_true", help="no heap search (a quick look)")
    p.add_argument("--out", default=os.path.join(BENCH, "results"))
    a = p.parse_args(argv)
    if not micropython() or not mpy_cross():
        sys.exit("bench: micropython or mpy-cross missing; run ./deploy.sh setup")
    t_run = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="ugate-bench-")
    mpy = os.path.join(tmp, "mpy")
    res = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
           "options": vars(a)}
    cloud = None
    try:
        build_mpy(mpy)
        cloud = Cloud(os.path.join(tmp, "state"))
        say("cloud up on https :%d, mqtts :%d (state %s)" % (cloud.http_port, cloud.mqtt_port, tmp))

        fw = Firmware(cloud, "a", os.path.join(tmp, "flash-session"), "mpy", mpy, options={})
        res["session"] = session.run(cloud, fw, a.commands, a.burst)
        res["idle_lag"] = session.idle_lag("mpy", mpy, os.path.join(tmp, "idle"))
        say("idle asyncio loop, 1 ms ticker: p99 %s us, max %s us" % (
            res["idle_lag"]["p99_us"], res["idle_lag"]["max_us"]))
        res["raw"] = baseline.raw_publish(cloud, "c", a.raw, "mpy", mpy, os.path.join(tmp, "raw"))
        say("raw QoS 1 publish + PUBACK in sequence: %.0f msg/s" % res["raw"]["rate"])
        res["umqtt"] = {}
        for nodelay, n in ((False, a.umqtt_nagle), (True, a.raw)):
            key = "nodelay" if nodelay else "nagle"
            try:
                res["umqtt"][key] = baseline.umqtt_publish(cloud, "c", n, os.path.join(tmp, "umqtt-" + key),
                                                           nodelay)
                say("stock umqtt.simple 1.3.4, %s: %.0f msg/s" % (key, res["umqtt"][key]["rate"]))
            except (OSError, ValueError, RuntimeError, httpx.HTTPError) as e:
                res["umqtt"][key] = {"error": str(e)[:300]}
                say("stock umqtt.simple, %s: not measured (%s)" % (key, str(e)[:200]))
        res["boot_cpython"] = baseline.cpython_boot(cloud, "d")
        res["boot_py"] = session.boot_only(Firmware(cloud, "c", os.path.join(tmp, "flash-bootpy"), "py"))
        say("boot to first ack as .py: %.3f s; CPython httpx+paho: %.3f s" % (
            res["boot_py"]["total"], res["boot_cpython"]["total"]))

        if not a.skip_heap:
            res["heap"] = {}
            spare = iter("efghijklmnop")

            def one(form, spec):
                lo, hi = (int(x) for x in spec.split(":"))
                sizes = list(range(lo, hi + 1, 8))
                devices = [next(spare) for _ in sizes]
                found, probes = heap.grid(cloud, devices, os.path.join(tmp, "heap"), form, mpy, sizes,
                                          a.stream, log=say)
                res["heap"][form] = {"min_k": found, "probes": probes, "grid": [lo, hi]}
            say("heap: %s .mpy and %s .py probes at once, %.0f s each" % (a.heap_mpy, a.heap_py, a.stream))
            threads = [threading.Thread(target=one, args=("mpy", a.heap_mpy)),
                       threading.Thread(target=one, args=("py", a.heap_py))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        if cloud is not None:
            cloud.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res["total_s"] = time.monotonic() - t_run
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    md = report.markdown(res)
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write(md)
    print(md)
    say("total %.0f s; wrote %s/latest.md and latest.json" % (res["total_s"], a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
