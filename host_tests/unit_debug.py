"""firmware.debug: the REPL helpers, against a gateway without a network. Both runtimes."""
import json

from firmware import app, compat, debug
from firmware.compat import ticks_ms
from firmware.net.mqtt import MQTTClient
from unit_gateway import _gateway

compat._quiet = True


def _running():
    gw, route, relay = _gateway(level=False)
    gw.started = ticks_ms()
    gw.sessions = 1
    gw.link_up = _Flag(True)
    gw.mqtt = MQTTClient(lambda t, p: None)
    gw.cloud.token = None
    gw.cloud.cred = None
    app.GATEWAY = gw
    return gw, route, relay


class _Flag:
    def __init__(self, v):
        self.v = v

    def is_set(self):
        return self.v


def test_without_a_gateway_it_says_so():
    app.GATEWAY = None
    try:
        debug.status()
    except RuntimeError as e:
        assert "not running" in str(e)
    else:
        raise AssertionError("no RuntimeError")


def test_status_reports_link_outbox_heap():
    gw, route, relay = _running()
    s = debug.status()
    assert s["link"] == "up" and s["outbox"] == 0 and s["token"] == "none"
    assert s["heap_free"] != 0 and s["uptime_s"] >= 0  # -1 under CPython
    app.GATEWAY = None


def test_relay_by_hand_is_reported_as_a_local_change():
    gw, route, relay = _running()
    mid = debug.relay("pump", True)
    assert relay.level is True
    e = gw.outbox.by_mid[mid]
    d = json.loads(e.payload)
    assert d["value"] is True and "desired_id" not in d and "report_status" not in d
    try:
        debug.relay("pump", "on")
    except ValueError:
        pass
    else:
        raise AssertionError("a bad value was accepted")
    assert relay.level is True and len(gw.outbox) == 1
    try:
        debug.relay("nope", True)
    except ValueError as err:
        assert "no command route" in str(err)
    else:
        raise AssertionError("an unknown route was accepted")
    rows = debug.routes()
    assert rows == [("pump", "command", True, None)]
    app.GATEWAY = None
