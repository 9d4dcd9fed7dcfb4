"""The virtual board's pins, for the unix port (whose `machine` has no Pin).

Each pin is a small file in the flash root's ``virtual/`` folder, so a test
or ``./deploy.sh sim`` drives inputs and reads outputs from outside:

    virtual/gpio<N>      digital level, "0" or "1" (inputs: written by the test;
                         outputs: written by the firmware, atomically)
    virtual/gpio<N>.log  every level an output was driven to, one per line, so a
                         test can prove a relay never showed a wrong level
    virtual/adc<N>       raw ADC reading 0..65535
    virtual/pwm<N>       "<freq> <duty_u16>" written by the firmware
    virtual/dht<N>       JSON [temperature, humidity], or "error" (a checksum failure)
    virtual/ds<N>        JSON temperature, or "missing" (no sensor on the bus)

The classes mirror the parts of machine.Pin, ADC, PWM, dht.DHT22 and
ds18x20.DS18X20 that the drivers use.
"""
import os

_DIR = "virtual"


def _path(name):
    try:
        os.mkdir(_DIR)
    except OSError:
        pass  # exists
    return _DIR + "/" + name


def _read(name, default=None):
    try:
        with open(_path(name)) as f:
            return f.read().strip()
    except OSError:
        return default


def _write(name, text):
    p = _path(name)
    with open(p + ".tmp", "w") as f:
        f.write(text)
    os.rename(p + ".tmp", p)


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, n, mode=IN, pull=None, value=None):
        self.name = "gpio%d" % n
        self.mode = mode
        if mode == Pin.OUT:
            # Written at once: the file shows the level the pin was created with.
            self.value(0 if value is None else value)

    def value(self, v=None):
        if v is None:
            text = _read(self.name, "0")
            return 1 if text == "1" else 0
        level = "1" if v else "0"
        with open(_path(self.name + ".log"), "a") as f:
            f.write(level + "\n")
        _write(self.name, level)
        return None


class ADC:
    def __init__(self, pin, atten=None):
        self.name = "adc%s" % pin.name[4:]

    def read_u16(self):
        text = _read(self.name, "0")
        try:
            return max(0, min(65535, int(text)))
        except ValueError:
            return 0


class PWM:
    def __init__(self, pin, freq=1000, duty_u16=0):
        self.name = "pwm%s" % pin.name[4:]
        self._freq, self._duty = freq, duty_u16
        self._show()

    def _show(self):
        _write(self.name, "%d %d" % (self._freq, self._duty))

    def freq(self, f=None):
        if f is None:
            return self._freq
        self._freq = f
        self._show()

    def duty_u16(self, d=None):
        if d is None:
            return self._duty
        self._duty = d
        self._show()


class DHT:
    def __init__(self, pin):
        self.name = "dht%s" % pin.name[4:]
        self._t = self._h = None

    def measure(self):
        import json
        text = _read(self.name)
        if text is None or text == "error":
            raise OSError(116, "DHT checksum/timeout")
        try:
            self._t, self._h = json.loads(text)
        except (ValueError, TypeError):
            raise OSError(116, "DHT bad data") from None

    def temperature(self):
        return self._t

    def humidity(self):
        return self._h


class DS18X20:
    def __init__(self, pin):
        self.name = "ds%s" % pin.name[4:]

    def scan(self):
        text = _read(self.name)
        return [] if text is None or text == "missing" else [bytearray(b"\x28virtual")]

    def convert_temp(self):
        if self.scan() == []:
            raise OSError(19, "no 1-Wire device")

    def read_temp(self, rom):
        text = _read(self.name)
        try:
            return float(text)
        except (TypeError, ValueError):
            raise OSError(5, "1-Wire read failed") from None
