"""Wiring: from the config's routes to route objects over drivers over pins.

Used once at boot (then unloaded, for RAM). Outputs are made first, each pin
created at its boot level, before any other pin or logic exists.
"""
from firmware import routes


class Digital:
    """read() for a debounced input: its stable level."""

    def __init__(self, d):
        self.d = d

    def read(self):
        self.d.poll()
        return self.d.value()


class Field:
    """read() for one field of a DHT reading (two routes may share one sensor)."""

    def __init__(self, dht, i):
        self.dht, self.i = dht, i

    def read(self):
        r = self.dht.read()
        return None if r is None else r[self.i]


class Probe:
    """read() for a DS18B20: the last conversion; refresh() converts (awaits 750 ms)
    at most once per interval, from the sampler task, never blocking the loop."""

    def __init__(self, ds, interval_ms):
        self.ds, self.interval_ms = ds, interval_ms
        self.value = None
        self._due = None

    async def refresh(self):
        from firmware.compat import ticks_add, ticks_diff, ticks_ms
        now = ticks_ms()
        if self._due is None or ticks_diff(now, self._due) >= 0:
            self._due = ticks_add(now, self.interval_ms)
            self.value = await self.ds.read()

    def read(self):
        return self.value


def _output(rid, rc, root, store):
    """The command route of an output driver, its pin created at the boot level."""
    d = rc["driver"]
    if d == "virtual_relay":
        from firmware.io.virtual import VirtualOutput
        level = VirtualOutput(root, rc.get("name", rid), rc.get("safe", False))
        return routes.CommandRoute(rid, rc, level)
    if d not in ("relay", "pwm"):
        return None
    from firmware.io import board, drivers  # only for hardware routes: RAM
    if d == "relay":
        if store is None:  # safe mode: no restore policy, the safe level
            on = rc["safe"]
        else:
            on = drivers.Relay.boot_level(rc["restore"], rc["safe"], store.get("relay:" + rid))
        high = rc["active"] == "high"
        pin = board.output_pin(rc["pin"], drivers.Relay.electrical(on, high))
        relay = drivers.Relay(pin, high, rc["safe"], int(rc["max_on"] * 1000), rc["group"],
                              initial=on)
        return routes.CommandRoute(rid, rc, relay, "boolean")
    if d == "pwm":
        out = drivers.PWMOut(board.pwm(rc["pin"], rc["freq"]), rc["freq"], rc["min"], rc["max"])
        out.set(rc["safe"])
        return routes.CommandRoute(rid, rc, out, "number", rc["min"], rc["max"])


def _input(rid, rc, root, shared):
    d = rc["driver"]
    if d == "virtual_sensor":
        from firmware.io.virtual import VirtualInput
        return VirtualInput(root, rc.get("name", rid))
    from firmware.io import board, drivers
    if d == "digital_in":
        return Digital(drivers.DigitalIn(board.input_pin(rc["pin"], rc["pull"]),
                                          rc["debounce_ms"], rc["invert"]))
    if d == "analog":
        return drivers.Analog(board.adc(rc["pin"], rc["atten_db"]), rc["samples"], rc["scale"],
                              rc["offset"], decimals=rc["decimals"])
    if d in ("dht11", "dht22"):
        key = (d, rc["pin"])
        if key not in shared:
            shared[key] = drivers.DHT(board.dht(rc["pin"], d))
        return Field(shared[key], 0 if rc["field"] == "temperature" else 1)
    if d == "ds18b20":
        return Probe(drivers.DS18B20(board.ds18x20(rc["pin"])), int(rc["interval"] * 1000))
    raise ValueError("no driver %r" % d)


def build(cfg_routes, root, store=None):
    """Route objects from the config's routes.

    Outputs first, each created at its boot level (the safe level, or the restored
    one), before any other pin or logic: nothing else runs before a relay is where
    it must be. `store` gives the last relay levels for restore "last"; without it
    (safe mode) every relay starts at its safe level whatever its restore policy.
    """
    out = {}
    for rid, rc in cfg_routes.items():
        r = _output(rid, rc, root, store)
        if r is not None:
            out[rid] = r
    shared = {}
    for rid, rc in cfg_routes.items():
        if rid not in out:
            out[rid] = routes.SensorRoute(rid, rc, _input(rid, rc, root, shared))
    return out
