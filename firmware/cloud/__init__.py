"""cloud: one dialect per module (realer now; blynk and thingsboard later).

A dialect knows its bootstrap and encodes events into topics and payloads and
decodes acks and commands. It never touches pins; only net touches sockets.
"""


def dialect(cfg, ctx):
    """The dialect object named by cfg.dialect."""
    if cfg.dialect == "realer":
        from firmware.cloud.realer import Realer
        return Realer(cfg, ctx)
    raise ValueError("cloud.dialect %r is not supported yet" % cfg.dialect)
