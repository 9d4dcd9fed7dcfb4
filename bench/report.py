"""The results table (Markdown) from the results dict that bench/__main__.py writes as JSON."""


def _ms(s):
    return "%.1f ms" % (s * 1000)


def _us(us):
    return "—" if us is None else ("%.2f ms" % (us / 1000))


def _dist(d, f=_ms):
    return "p50 %s · p99 %s · max %s (n=%d%s)" % (f(d["p50"]), f(d["p99"]), f(d["max"]), d["n"],
                                                  ": p99 is the max" if d["n"] < 100 else "")


def _rate(d):
    if not d:
        return "not run"
    if "error" in d:
        return "not measured (%s)" % d["error"][:120]
    return "**%.0f msg/s** (%d in %.2f s)" % (d["rate"], d["n"], d["seconds"])


def _lag(d):
    return "p99 %s · max %s (p50 %s, n=%d)" % (_us(d["p99_us"]), _us(d["max_us"]), _us(d["p50_us"]), d["n"])


def _heap(h, form):
    r = (h or {}).get(form)
    if r is None:
        return "not run"
    lo, hi = r.get("grid", (None, 256))
    if r["min_k"] is None:
        return "> %dK (the grid's largest failed)" % hi
    if r["min_k"] == lo:
        return "**≤ %dK** (the grid's smallest passed)" % lo
    return "**%dK**" % r["min_k"]


def _heap_mem(h, form, key):
    r = (h or {}).get(form)
    if not r or r["min_k"] is None:
        return "—"
    p = next((p for p in r["probes"] if p["heap_k"] == r["min_k"]), None)
    return "%.1f KB" % (p[key] / 1024) if p and key in p else "—"


def _probes(h, form):
    r = (h or {}).get(form)
    if not r:
        return ""
    return ", ".join("%dK %s" % (p["heap_k"], "ok" if p["ok"] else "fails") for p in r["probes"])


def markdown(res):
    m, s = res["machine"], res["session"]
    lat, burst, off = s["latency"], s["burst"], s["offline"]
    ph = s["phases"]
    h = res.get("heap")
    stream = res["options"]["stream"]
    rate = burst["n"] / (burst["settled_ms"] / 1000)
    raw = res["raw"]
    steady, recon, bph = ph.get("steady"), ph.get("reconnect"), ph.get("burst:%d" % burst["n"])
    b_mpy, b_py, b_cp = s["boot"], res["boot_py"], res["boot_cpython"]
    out = []
    w = out.append
    w("# ugate benchmarks: latest run")
    w("")
    w("Run %s on %s (nproc %d), Linux %s; CPython %s; MicroPython %s, unix port (64-bit); %s."
      % (res["started"], m["cpu"], m["nproc"], m["kernel"], m["python"], m["micropython"],
         m["mosquitto"]))
    w("All figures from one run of `./deploy.sh bench` (%.0f s in total), against the local Realer"
      " cloud over TLS (bench/fleet.json: 8 routes per gateway, 6 sensors + 2 boolean commands)."
      % res["total_s"])
    w("The firmware runs as `.mpy` (tools.build, portable bytecode) unless a row says `.py`.")
    w("")
    w("| figure | ugate firmware | baseline (same run) | notes |")
    w("|---|---|---|---|")
    w("| smallest `-X heapsize` running the whole gateway through a %s stream | .mpy: %s | .py: %s "
      "| 8 routes, TLS session, outbox; readings on all 6 sensors every second, a relay command every"
      " 5 s; every size of the grid (8K steps) runs at once on its own gateway; the figure is the"
      " smallest size from which every larger one passed. Probes: .mpy %s; .py %s |"
      % ("%.0f-minute" % (stream / 60) if stream >= 60 else "%.0f s" % stream,
         _heap(h, "mpy"), _heap(h, "py"), _probes(h, "mpy"), _probes(h, "py")))
    w("| peak live heap at that size (after `gc.collect()`, every 5 s) | .mpy: %s | .py: %s "
      "| sampled, so a peak between samples can be missed |"
      % (_heap_mem(h, "mpy", "live"), _heap_mem(h, "py", "live")))
    w("| peak `gc.mem_alloc()` at that size (every 10 ms, no forced collection) | .mpy: %s | .py: %s "
      "| garbage included: on a small heap this sits near the heap size by design |"
      % (_heap_mem(h, "mpy", "peak"), _heap_mem(h, "py", "peak")))
    w("| acked feed data per second (burst of %d readings through `Gateway.report()`) | **%.0f msg/s** "
      "(%d acked in %.2f s, %d dropped) | raw QoS 1 publish → PUBACK in sequence, firmware's own "
      "`MQTTClient`, same runtime and broker, TLS: **%.0f msg/s** (%d in %.2f s) | the firmware's figure"
      " is the application ack (cloud validation + SQLite ledger + ack publish), up to %s in flight,"
      " with one log line per publish and per ack; the raw loop waits for PUBACK only |"
      % (burst["n"], rate, burst["n"], burst["settled_ms"] / 1000, burst["dropped"], raw["rate"],
         raw["n"], raw["seconds"], "8 (catalog `max_inflight_messages`)"))
    um = res.get("umqtt") or {}
    w("| QoS 1 publishes per second, one at a time | firmware's `MQTTClient` (raw loop above): "
      "**%.0f msg/s** | stock `umqtt.simple` 1.3.4 (PyPI), same runtime, broker and verified TLS: "
      "%s with Nagle (as shipped), %s with TCP_NODELAY | umqtt.simple writes each packet in 4 "
      "pieces and blocks in `publish()` until PUBACK; with Nagle on, each publish waits for the "
      "peer's delayed ACK. TLS for it comes from `bench/mp/ussl.py` (the `ussl` it imports no longer "
      "exists) |" % (raw["rate"], _rate(um.get("nagle")), _rate(um.get("nodelay"))))
    w("| desired → virtual relay changed | %s | — | t0 = the cloud's ledger `published_at` (just "
      "before its MQTT publish); relay file polled every 1 ms |" % _dist(lat["relay"]))
    w("| desired → command ack at the cloud | %s | broker's own publish → subscribe (paho "
      "subscriber on another gateway's desired topic, same admin path): %s | t0 as above; ack = "
      "ledger `acked_at`; %d ms idle before each command (see notes) |"
      % (_dist(lat["ack"]), _dist(lat["broker"]), lat["gap_s"] * 1000))
    if steady:
        w("| loop lag, steady state (1 ms ticker in the firmware's loop) | %s | idle asyncio loop, "
          "ticker alone: %s | steady: readings on all 6 sensors every second for %.0f s |"
          % (_lag(steady["lag"]), _lag(res["idle_lag"]), steady["ms"] / 1000))
    if bph:
        w("| loop lag during the acked burst | %s | (idle loop above) | |" % _lag(bph["lag"]))
    if recon:
        w("| loop lag through a broker restart (`POST /admin/broker/restart`) | %s | (idle loop above) "
          "| from the restart request until 1 s after `mqtt: connected` (%.1f s); TLS handshake + "
          "CONNECT + SUBSCRIBE, no HTTPS (the credential stays valid) |"
          % (_lag(recon["lag"]), s["reconnect_s"]))
    for stage, label in (("start", "process start → boot line"), ("token", "token (HTTPS)"),
                         ("catalog", "catalog (HTTPS)"), ("credential", "credential (HTTPS)"),
                         ("tls_connect", "TLS + CONNECT + SUBSCRIBE"), ("first_ack", "first publish → ack")):
        cp = {"start": None, "tls_connect": b_cp["connect"]}.get(stage, b_cp.get(stage))
        w("| boot: %s | .mpy %s · .py %s | %s | %s |" % (
            label, _ms(b_mpy[stage]), _ms(b_py[stage]), "CPython httpx + paho: " + _ms(cp) if cp is not None
            else "—", "host clock" if stage == "start" else "from the firmware's log timestamps (1 ms)"))
    w("| boot to first acked feed data | **.mpy %s · .py %s** | CPython httpx + paho: %s | no WiFi/NTP "
      "on the unix port |" % (_ms(b_mpy["total"]), _ms(b_py["total"]), _ms(b_cp["total"])))
    offp = ph.get("offline:%d" % off["n"]) or off
    spill = burst.get("spills", -1) >= 0
    won = burst["writes"] + max(0, burst.get("spills", 0))
    woff = offp["writes"] + max(0, offp.get("spills", 0))
    w("| flash writes per 1000 messages, online | %.1f (%d for %d: %d `Store` + %s) | offline (the "
      "emulator's mosquitto stopped, %.1f s): %.1f (%d for %d: %d `Store` + %s; %d evicted) | `Store.writes`: "
      "one write per 100 message_ids reserved; %s |"
      % (won * 1000 / burst["n"], won, burst["n"], burst["writes"],
         ("%d `outbox.dat`" % burst["spills"]) if spill else "no spill",
         offp.get("ms", 0) / 1000, woff * 1000 / off["n"], woff, off["n"], offp["writes"],
         ("%d `outbox.dat`" % offp["spills"]) if spill else "no spill", offp.get("evicted", off["evicted"]),
         "`Outbox.spills`: `outbox.dat` rewrites (at most every 5 s while offline or an ack is overdue)"
         if spill else "this firmware's outbox is RAM only: readings beyond its capacity are evicted"))
    w("")
    w("Loop lag: the idle baseline is the ticker alone with no socket open; p99 and max show"
      " blocking. The latency baseline's subscriber is paho (CPython), the firmware is MicroPython;"
      " both read the same desired publish path of the emulator's application service.")
    w("")
    errs = s.get("errors") or []
    w("Firmware tracebacks or MemoryErrors in the timing session: %s." % (len(errs) or "none"))
    w("")
    return "\n".join(out) + "\n"
