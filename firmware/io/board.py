"""The board: the one module that imports machine, network and esp32.

Everything else gets pins, buses and radios from here. On the unix port
(whose machine module has no Pin) the same calls return the virtual board's
file-backed pins (firmware/io/vpins.py), so the firmware runs unchanged.
"""
try:
    import machine
    _REAL = hasattr(machine, "Pin")
except ImportError:  # CPython unit tests
    machine = None  # type: ignore[assignment]  # CPython unit tests
    _REAL = False

_ATTEN = {0: 0, 2.5: 1, 6: 2, 11: 3}  # dB -> ADC.ATTN_* (0, 2.5, 6, 11 dB)


def virtual():
    """True on the unix port and in tests: pins are files in virtual/."""
    return not _REAL


def _pins():
    if _REAL:
        return machine
    from firmware.io import vpins
    return vpins


def output_pin(n, level):
    """An output pin created AT `level` (0/1): it never shows another level first.

    This is what keeps a relay from glitching at boot: Pin(n, OUT, value=level)
    sets the output register before the pin becomes an output.
    """
    m = _pins()
    return m.Pin(n, m.Pin.OUT, value=level)


def input_pin(n, pull=None):
    m = _pins()
    p = {"up": m.Pin.PULL_UP, "down": m.Pin.PULL_DOWN}.get(pull)
    return m.Pin(n, m.Pin.IN, p) if p is not None else m.Pin(n, m.Pin.IN)


def adc(n, atten_db=11):
    """An ADC on pin n; 11 dB attenuation reads up to about 3.1 V on the ESP32."""
    m = _pins()
    pin = m.Pin(n)
    if _REAL:
        return m.ADC(pin, atten=_ATTEN.get(atten_db, 3))
    return m.ADC(pin)


def pwm(n, freq):
    m = _pins()
    return m.PWM(m.Pin(n), freq=freq, duty_u16=0)


def dht(n, kind="dht22"):
    if not _REAL:
        from firmware.io import vpins
        return vpins.DHT(vpins.Pin(n))
    import dht as _dht
    return (_dht.DHT11 if kind == "dht11" else _dht.DHT22)(machine.Pin(n))


def ds18x20(n):
    if not _REAL:
        from firmware.io import vpins
        return vpins.DS18X20(vpins.Pin(n))
    import ds18x20
    import onewire
    return ds18x20.DS18X20(onewire.OneWire(machine.Pin(n)))


def watchdog(timeout_ms):
    """machine.WDT on a board; None on the unix port."""
    if _REAL and hasattr(machine, "WDT"):
        return machine.WDT(timeout=timeout_ms)
    return None


def powered_on():
    """True when this boot follows a power-on (a power cut is not a firmware crash).
    The virtual board reads virtual/reset_cause ("power" = power-on), which a test
    writes before a start that follows a simulated power cut."""
    if _REAL:
        return machine.reset_cause() == machine.PWRON_RESET
    try:  # read here, not through vpins: importing it would keep its code in RAM
        with open("virtual/reset_cause") as f:
            return f.read().strip() == "power"
    except OSError:
        return False


def wlan():
    """The WiFi station interface, or None where there is no radio."""
    if not _REAL:
        return None
    import network
    return network.WLAN(network.STA_IF)
