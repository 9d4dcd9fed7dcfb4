"""Start-up: config, store, routes (relays safe first), then the gateway's asyncio program.

A bad config never ends in a reboot loop: the device stays up with its relays
at their safe level, says why every minute, and keeps the REPL usable.
"""
import asyncio
import gc

from firmware.compat import log, unload

_KEEP = ("dialect", "api_url", "device_id", "client_id", "client_secret", "ca", "scopes",
         "client_auth", "keepalive", "routes", "wifi_ssid", "wifi_password", "log_level",
         "outbox_capacity", "outbox_when_full", "outbox_spill")


GATEWAY = None  # the running Gateway, for firmware.debug at the REPL


class Settings:
    """The checked configuration, without the checking code."""


def settings(root="."):
    """Load and check the config; keep the values, drop the config module (about 10 KB)."""
    from firmware import config as _config
    try:
        cfg = _config.load(root)
    except _config.ConfigError as e:
        return None, str(e)
    s = Settings()
    for k in _KEEP:
        setattr(s, k, getattr(cfg, k))
    del cfg, _config
    unload("firmware.config")
    gc.collect()
    return s, None


def main(root="."):
    global GATEWAY
    from firmware import boot
    safe = boot.start(root)
    del boot
    cfg, why = settings(root)
    if cfg is None:
        _config_error_loop(why)
        return
    from firmware.store import Store
    store = Store(root)
    store.load()  # first: it holds the relay levels that restore "last" brings back
    from firmware.io import wiring
    # Outputs at their boot level before anything else; in safe mode, at their safe level.
    routes = wiring.build(cfg.routes, root, None if safe else store)
    del wiring
    unload("firmware.io.wiring")  # used once: give its code's RAM back
    unload("firmware.boot")  # imported again, briefly, for WiFi/NTP and healthy()
    gc.collect()
    if safe:
        log("boot", "SAFE MODE: %s. Relays stay safe; the REPL is free. Fix the cause, then"
                    " reset (or delete boot.dat)." % safe)
        return
    from firmware.gateway import Gateway
    gw = GATEWAY = Gateway(cfg, store, routes, root)
    log("boot", "ugate %s, device %d, %d routes, dialect %s" % (
        _version(), cfg.device_id, len(routes), cfg.dialect))
    try:
        asyncio.run(gw.run())
    except KeyboardInterrupt:
        log("shutdown", "interrupted: leaving the broker and revoking the token")
        asyncio.new_event_loop()
        asyncio.run(gw.shutdown())
    finally:
        asyncio.new_event_loop()


def _version():
    from firmware import VERSION
    return VERSION


def _config_error_loop(why):
    import time
    while True:
        log("config", "%s -- fix config.json/secrets.json; relays stay safe" % why)
        time.sleep(60)
