"""Boot: safe mode, the crash counter, WiFi and NTP.

Safe mode starts the board with relays at their safe level, the network up
and the REPL usable, and nothing else. It is entered when the BOOT button
(GPIO0) is held at power-on, or after `CRASHES` resets in a row (not counting a
power-on, which starts the count afresh) that never got healthy (``healthy()`` is called by the gateway once it has run for a while
with the cloud answering). The count lives in ``boot.dat`` at the flash root.

WiFi and NTP run as asyncio tasks with backoff and a bounded wait: the loop
never spins on ``isconnected()``, and TLS waits for the clock (certificate
validity needs real time).
"""
import asyncio

from firmware.compat import const, log

CRASHES = const(3)
_FILE = "boot.dat"
_BOOT_BUTTON = const(0)


def _count(root):
    try:
        with open(root + "/" + _FILE) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _store(root, n):
    try:
        with open(root + "/" + _FILE, "w") as f:
            f.write(str(n))
    except OSError as e:
        log("boot", "cannot write %s: %s" % (_FILE, e))


def start(root="."):
    """Count this boot; return the reason for safe mode, or None for a normal start.
    A power-on starts the count afresh: a power cut (or a user cycling power) is not
    a crash, and a gateway cut off from its network while the power comes and goes
    must not end in safe mode."""
    from firmware.io import board
    n = 1 if board.powered_on() else _count(root) + 1
    _store(root, n)
    if n > CRASHES:
        return "%d boots in a row did not get healthy" % (n - 1)
    if _button_held():
        return "the BOOT button is held"
    return None


def healthy(root="."):
    """The firmware ran well: the next boot starts normally."""
    if _count(root):
        _store(root, 0)


def _button_held():
    from firmware.io import board
    if board.virtual():
        return False
    return board.input_pin(_BOOT_BUTTON, "up").value() == 0


async def wifi(ssid, password, wait_ms=20000, backoff_ms=1000, cap_ms=60000):
    """Join the WiFi network; keep trying with exponential backoff. Returns the
    station interface once connected, or None where there is no radio."""
    from firmware.io import board
    wlan = board.wlan()
    if wlan is None or not ssid:
        return None
    wlan.active(True)
    delay = backoff_ms
    while True:
        if not wlan.isconnected():
            log("wifi", "joining %s" % ssid)
            try:
                wlan.connect(ssid, password or "")
            except OSError as e:
                log("wifi", "connect: %s" % e)
        waited = 0
        while not wlan.isconnected() and waited < wait_ms:
            await asyncio.sleep(0.25)
            waited += 250
        if wlan.isconnected():
            log("wifi", "up: %s" % (wlan.ifconfig()[0],))
            return wlan
        log("wifi", "no link after %d s; again in %d s" % (wait_ms // 1000, delay // 1000))
        wlan.disconnect()
        await asyncio.sleep(delay / 1000)
        delay = min(cap_ms, delay * 2)


async def ntp(tries=5, wait_s=2):
    """Set the clock from NTP before any TLS. True when set (or nothing to do)."""
    from firmware.io import board
    if board.virtual():
        return True  # the unix port runs on the host's clock
    import ntptime
    for i in range(tries):
        try:
            ntptime.settime()
            log("ntp", "clock set")
            return True
        except (OSError, OverflowError) as e:
            log("ntp", "try %d failed: %s" % (i + 1, e))
            await asyncio.sleep(wait_s << i)
    return False
