"""Start-up: config, store, routes (relays safe first), then the gateway's asyncio program.

A bad config never ends in a reboot loop: the device stays up with its relays
at their safe level, says why every minute, and keeps the REPL usable.
"""
import asyncio

from firmware.compat import log


def main(root="."):
    from firmware import config as _config
    try:
        cfg = _config.load(root)
    except _config.ConfigError as e:
        _config_error_loop(str(e))
        return
    from firmware import routes as _routes
    routes = _routes.build(cfg.routes, root)  # relays at their safe level before anything else
    from firmware.store import Store
    store = Store(root)
    store.load()
    from firmware.gateway import Gateway
    gw = Gateway(cfg, store, routes)
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
