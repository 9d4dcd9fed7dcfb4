"""The virtual board: sensors and relays backed by files, for the unix port and tests.

In the flash root, ``virtual/<name>.in`` holds a sensor's current reading as
JSON (a test or ``./deploy.sh sim`` writes it), and the firmware writes a
relay's physical level to ``virtual/<name>.out`` (``true``/``false`` or a
number) each time it changes. Writes are atomic (temporary file + rename), so
a reader never sees half a value.
"""
import json
import os

_DIR = "virtual"


def _ensure(root):
    d = root + "/" + _DIR
    try:
        os.mkdir(d)
    except OSError:
        pass  # it exists
    return d


class VirtualInput:
    """A reading from ``virtual/<name>.in``; None while the file is missing or unreadable."""

    def __init__(self, root, name):
        self.path = _ensure(root) + "/" + name + ".in"
        self.error = None

    def read(self):
        try:
            with open(self.path) as f:
                text = f.read()
        except OSError:
            self.error = "no input file"
            return None
        try:
            v = json.loads(text)
        except ValueError:
            self.error = "bad input: %r" % text[:20]
            return None
        if isinstance(v, (bool, int, float)):
            self.error = None
            return v
        self.error = "input is not a number or boolean"
        return None


class VirtualOutput:
    """A relay or output level written to ``virtual/<name>.out``.

    Created at its safe level before anything else runs, like a real relay pin.
    """

    def __init__(self, root, name, level):
        self.path = _ensure(root) + "/" + name + ".out"
        self.level = None
        self.set(level)

    def set(self, level):
        if level == self.level and type(level) is type(self.level):
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(level))
        os.rename(tmp, self.path)
        self.level = level

    def value(self):
        return self.level
