"""Device fidelity: the firmware compiles for the ESP32 and imports only MicroPython modules."""
import ast
import os

from realer_harness import ROOT
from tools.build import build, sources

# Modules the stock ESP32 MicroPython image provides (built in or frozen).
MICROPYTHON_MODULES = {
    "asyncio", "binascii", "errno", "gc", "json", "machine", "micropython", "network", "esp32",
    "os", "random", "select", "socket", "ssl", "struct", "sys", "time", "tls", "hashlib",
    "collections", "io", "re", "dht", "onewire", "ds18x20", "ntptime", "neopixel", "deflate",
    "aiorepl",  # optional, from micropython-lib: `mpremote mip install aiorepl` puts it in /lib
}


def _imports(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0], node.lineno


def test_every_firmware_file_compiles_for_the_esp32(tmp_path):
    made = build(str(tmp_path), "xtensawin", quiet=True)
    assert len(made) == len(list(sources())) > 10
    for path in made:
        with open(path, "rb") as f:
            assert f.read(1) == b"M"  # an .mpy header


def test_firmware_imports_only_micropython_modules():
    files = [os.path.join(ROOT, p) for p in sources()] + [
        os.path.join(ROOT, "boot.py"), os.path.join(ROOT, "main.py")]
    bad = []
    for path in files:
        for mod, line in _imports(path):
            if mod != "firmware" and mod not in MICROPYTHON_MODULES:
                bad.append("%s:%d imports %s" % (os.path.relpath(path, ROOT), line, mod))
    assert bad == []


def test_only_firmware_io_imports_machine_network_esp32():
    offenders = []
    for rel in sources():
        if rel.startswith(os.path.join("firmware", "io")):
            continue
        for mod, line in _imports(os.path.join(ROOT, rel)):
            if mod in ("machine", "network", "esp32"):
                offenders.append("%s:%d" % (rel, line))
    assert offenders == []
