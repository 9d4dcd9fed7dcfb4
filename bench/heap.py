"""The smallest `-X heapsize` that runs the whole gateway through a stream (5 minutes by
default): a grid of heap sizes in 8 KB steps, every size at once, each on its own gateway
(bench/common.fleet adds them), for one firmware form (.py or .mpy).

A probe passes when the firmware connects, runs `stream_s` seconds of readings (all six
sensors every second) and relay commands (every 5 s) with no MemoryError or traceback,
gets sensor data acked, applies the commands, and is still running at the end.
"""
import os
import re
import time

from bench.common import Firmware, Stimulus



def probe(cloud, device, flash, form, mpy_dir, heap_k, stream_s):
    fw = Firmware(cloud, device, flash, form, mpy_dir, heap="%dK" % heap_k, wrapper="bench_mem")
    fw.start()
    t0 = time.monotonic()
    result = {"heap_k": heap_k, "ok": False}
    stim = None
    try:
        if fw.wait_log(r"mqtt: connected|MemoryError|Traceback", 30) is None or not re.search(
                r"mqtt: connected", fw.text()):
            result["why"] = _why(fw, "no MQTT connection")
            return result
        stim = Stimulus(fw, command_every=5)
        stim.start()
        while time.monotonic() - t0 < stream_s:
            time.sleep(0.2)
            if not fw.alive() or "MemoryError" in fw.text() or "Traceback" in fw.text():
                result["why"] = _why(fw, "exited")
                return result
        stim.stop()
        time.sleep(1)  # the last command's answer
        text = fw.text()
        acks = len(re.findall(r"ack: \S+ accepted", text))
        sent = [c for c in stim.commands if "sequence_number" in c]
        applied = len(re.findall(r"desired: \S+ seq=\d+ .*-> applied", text))
        result.update(acks=acks, commands=len(sent), applied=applied, seconds=time.monotonic() - t0)
        mem = [m for m in fw.marks() if "peak" in m]
        if mem:
            result.update(peak=mem[-1]["peak"], live=mem[-1]["live"])
        if "MemoryError" in text or "Traceback" in text or not fw.alive():
            result["why"] = _why(fw, "exited")
        elif acks < stream_s or applied < len(sent) - 1:
            result["why"] = "only %d acks, %d of %d commands applied" % (acks, applied, len(sent))
        else:
            result["ok"] = True
        return result
    finally:
        if stim is not None:
            stim.stop()
        fw.stop()


def _why(fw, default):
    """MemoryError in <function> (<file>:<line>), else the default."""
    time.sleep(0.5)  # the rest of a traceback
    where = None
    for _, t in fw.lines:
        m = re.search(r'File "([^"]+)", line (\d+), in (\S+)', t)
        if m:
            where = "%s (%s:%s)" % (m.group(3), os.path.basename(m.group(1)), m.group(2))
        if "MemoryError" in t:
            m = re.search(r"allocating (\d+) bytes", t)
            tag = re.match(r"\s*[\d.]+ (\w+):", t)
            return "MemoryError%s%s" % (
                " in " + (where if "Traceback" in fw.text() and where else (tag.group(1) if tag else "?")),
                ", allocating %s bytes" % m.group(1) if m else "")
    return default + ("" if fw.alive() else " (exit %s)" % fw.proc.poll())


def grid(cloud, devices, folder, form, mpy_dir, sizes_k, stream_s, log=print):
    """Probe every size in `sizes_k` at the same time (one thread and gateway each);
    returns (smallest passing size in K or None, every probe in size order). A size
    below a failing one is not trusted: the figure is the smallest size from which
    every larger size in the grid passed."""
    import threading
    probes = {}

    def one(k, device):
        r = probe(cloud, device, os.path.join(folder, "%s-%dK" % (form, k)), form, mpy_dir, k, stream_s)
        probes[k] = r
        log("heap %-3s %4dK: %s" % (form, k, "runs" if r["ok"] else "fails: " + r["why"]))
    threads = [threading.Thread(target=one, args=(k, d)) for k, d in zip(sizes_k, devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = None
    for k in sorted(sizes_k, reverse=True):
        if not probes[k]["ok"]:
            break
        found = k
    return found, [probes[k] for k in sorted(probes)]
