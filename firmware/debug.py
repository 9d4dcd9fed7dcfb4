"""REPL debugging on the board: one import, three functions.

    >>> from firmware.debug import *
    >>> status()        # link, token/credential expiry, outbox, heap, uptime
    >>> routes()        # every route with its last value and last ack
    >>> relay("relay", True)   # switch by hand; reported to the cloud as a local change

The REPL runs beside the gateway when micropython-lib's ``aiorepl`` is
installed (``mpremote mip install aiorepl``): main.py then starts it as one
more task, so these work while the gateway runs.
"""
from firmware.compat import heap, ticks_diff, ticks_ms


def _gw():
    from firmware import app
    if app.GATEWAY is None:
        raise RuntimeError("the gateway is not running (safe mode, or a config error)")
    return app.GATEWAY


def _left(t0, life_s):
    return "%d s" % ((life_s * 1000 - ticks_diff(ticks_ms(), t0)) // 1000)


def status():
    """Print the gateway's state; return it as a dict too."""
    gw = _gw()
    c = gw.cloud
    now = ticks_ms()
    free, used = heap()
    s = {
        "link": "up" if gw.link_up.is_set() else "down",
        "sessions": gw.sessions,
        "token": ("%d s left" % (ticks_diff(c.token_until, now) // 1000)) if c.token else "none",
        "credential": (c.cred.username + ", " + _left(c.cred.t0, c.cred.expires_in) + " left")
        if c.cred else "none",
        "outbox": len(gw.outbox),
        "delivered": gw.outbox.delivered,
        "dropped": gw.outbox.dropped + gw.outbox.evicted,
        "inflight": len(gw.mqtt.inflight),
        "heap_free": free,
        "heap_used": used,
        "uptime_s": ticks_diff(now, gw.started) // 1000,
    }
    for k in ("link", "sessions", "token", "credential", "outbox", "delivered", "dropped",
              "inflight", "heap_free", "heap_used", "uptime_s"):
        print("%-11s %s" % (k, s[k]))
    return s


def routes():
    """Print every route: kind, name, last value, last ack."""
    gw = _gw()
    out = []
    for rid, r in gw.routes.items():
        v = r.value() if r.kind == "command" else r.last_value
        out.append((r.name, r.kind, v, r.last_ack))
        print("%-12s %-8s value=%-8s last ack=%s  (%s)" % (r.name, r.kind, v, r.last_ack, rid))
    return out


def relay(name, on):
    """Switch a command route by hand; the cloud hears it as a local change."""
    gw = _gw()
    for r in gw.routes.values():
        if r.name == name and r.kind == "command":
            gw.apply(r, r.check(on))
            mid = gw.report(r, r.value())
            print("%s -> %s (reported as message_id %s)" % (name, r.value(), mid))
            return mid
    raise ValueError("no command route named %r" % name)
