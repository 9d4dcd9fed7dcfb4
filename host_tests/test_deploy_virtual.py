"""`./deploy.sh deploy` onto the virtual board, through the real mpremote, then the firmware runs.

The virtual board is the MicroPython unix port behind socat (tools/board.py):
mpremote talks to it over socket://127.0.0.1:N exactly as to a USB serial
port (raw REPL, fs cp, exec), and its flash root is a folder.
"""
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

import mp
from realer_harness import ROOT, free_port
from tools import proc
from tools.board import VirtualBoard
from tools.build import build
from tools.deploy import chip_offset
from tools.provision import provision

DEPLOY_TIMEOUT = 240


def _deploy(url, config=None, *extra):
    cmd = [sys.executable, "-m", "tools.deploy", "deploy", "--port", url] + (
        ["--config", str(config)] if config else []) + list(extra)
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DEPLOY_TIMEOUT,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def counts(out):
    line = [l for l in out.splitlines() if "unchanged:" in l][-1]
    return {k: int(v) for k, v in (p.strip().split(":") for p in line.split("(")[0][len("deploy: "):].split(","))}


def copied(out):
    return sorted(l.split(":", 1)[1] for l in out.splitlines() if l.startswith("cp "))


@pytest.fixture
def board(tmp_path):
    b = VirtualBoard(tmp_path / "flash", free_port()).start()
    yield b
    b.stop()
    assert not b.running()


def test_virtual_board_speaks_mpremote_and_survives_a_soft_reset(board):
    mpr = os.path.join(os.path.dirname(sys.executable), "mpremote")
    r = subprocess.run([mpr, "connect", board.url, "resume", "exec", "import os; print(os.getcwd())"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == board.flash, r.stdout + r.stderr
    # A soft reset ends that unix port process: the connection drops...
    subprocess.run([mpr, "connect", board.url, "soft-reset"], capture_output=True, timeout=30)
    # ...and the next connection gets a fresh one, files still there.
    with open(os.path.join(board.flash, "kept.txt"), "w") as f:
        f.write("x")
    r = subprocess.run([mpr, "connect", board.url, "resume", "exec", "print(open('kept.txt').read())"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "x", r.stdout + r.stderr
    assert json.load(open(os.path.join(board.flash, ".board.json")))["port"] == board.port


def test_deploy_copies_changes_only_and_the_deployed_firmware_runs(cloud, board, tmp_path):
    config = tmp_path / "config"
    provision(str(config), cloud.state)
    # One build for every deploy here: others may be editing firmware/ meanwhile.
    pre = str(tmp_path / "build")
    build(pre, quiet=True)
    mods = sorted(os.path.relpath(os.path.join(d, n), pre) for d, _, fs in os.walk(pre)
                  for n in fs if n.endswith(".mpy"))

    def deploy(url, config=None):
        return _deploy(url, config, "--prebuilt", pre)

    # 1. A fresh board: everything is copied.
    out = deploy(board.url, config)
    assert "native arch x64" in out and "prebuilt" in out
    assert counts(out) == {"unchanged": 0, "copied": len(mods) + 5, "removed": 0}, out
    for rel in mods + ["boot.py", "main.py", "config.json", "secrets.json", "ca.der"]:
        assert os.path.isfile(os.path.join(board.flash, rel)), rel
    assert not any(n.endswith(".py") for _, _, fs in os.walk(os.path.join(board.flash, "firmware")) for n in fs)
    for name in ("config.json", "secrets.json", "ca.der"):
        assert open(os.path.join(board.flash, name), "rb").read() == open(config / name, "rb").read()
    assert "the board imports firmware" in out and "__init__.mpy" in out

    # 2. Nothing changed: nothing is copied (hashes computed on the board).
    out = deploy(board.url, config)
    assert counts(out) == {"unchanged": len(mods) + 5, "copied": 0, "removed": 0}, out

    # 3. A touched but identical config is unchanged; an edited one is the only copy.
    os.utime(config / "config.json", (time.time() + 5, time.time() + 5))
    out = deploy(board.url, config)
    assert counts(out)["copied"] == 0, out
    cfg = json.load(open(config / "config.json"))
    cfg["mqtt"]["keepalive"] = 45
    json.dump(cfg, open(config / "config.json", "w"), indent=2)
    out = deploy(board.url, config)
    assert copied(out) == ["config.json"], out
    assert counts(out) == {"unchanged": len(mods) + 4, "copied": 1, "removed": 0}, out
    assert json.load(open(os.path.join(board.flash, "config.json")))["mqtt"]["keepalive"] == 45

    # 4. A stale source next to its .mpy would shadow it: removed; a damaged file: recopied.
    with open(os.path.join(board.flash, "firmware", "routes.py"), "w") as f:
        f.write("raise ImportError('stale source')\n")
    with open(os.path.join(board.flash, "firmware", "store.mpy"), "ab") as f:
        f.write(b"\0")
    out = deploy(board.url, config)
    assert copied(out) == ["firmware/store.mpy"], out
    assert counts(out)["removed"] == 1 and "stale firmware/routes.py" in out, out
    assert not os.path.exists(os.path.join(board.flash, "firmware", "routes.py"))

    # 5. The deployed firmware runs from the flash folder alone (no repo path on sys.path).
    os.makedirs(os.path.join(board.flash, "virtual"), exist_ok=True)
    for name in os.listdir(config / "virtual"):
        with open(config / "virtual" / name) as src, open(os.path.join(board.flash, "virtual", name), "w") as dst:
            dst.write(src.read())
    fw = subprocess.Popen([mp.binary(), "main.py"], cwd=board.flash, text=True,
                          env=dict(os.environ, MICROPYPATH=".frozen:" + board.flash),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, q = [], queue.Queue()

    def pump():
        for line in fw.stdout:
            lines.append(line.rstrip("\n"))
            q.put(line)
        q.put(None)
    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                line = q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            assert line is not None, "firmware exited:\n" + "\n".join(lines)
            if "mqtt: connected" in line:
                break
            assert time.monotonic() < deadline, "no 'mqtt: connected' in:\n" + "\n".join(lines)
    finally:
        import signal
        proc.stop(fw, signal.SIGINT, 15)
    assert "mqtt: connected" in "\n".join(lines)

    # 6. On the board itself: `logs --reset` starts it in the board's PTY and follows it.
    r = subprocess.run([sys.executable, "-m", "tools.deploy", "logs", "--port", board.url, "--reset",
                        "--until", "mqtt: connected", "--duration", "60"],
                       cwd=ROOT, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "mqtt: connected" in r.stdout, r.stdout + r.stderr


def test_deploy_to_virtual_dir_starts_a_temporary_board_and_stops_it(tmp_path):
    flash = tmp_path / "flash"
    out = _deploy("virtual:%s" % flash)
    assert "started a temporary virtual board" in out and "portable bytecode" in out
    assert counts(out)["copied"] >= 10 + 2
    assert os.path.isfile(flash / "firmware" / "app.mpy") and os.path.isfile(flash / "main.py")
    assert "no config.json" in out  # deploying without --config says so
    assert not os.path.exists(flash / ".board.json")  # the temporary board is gone


def test_flash_with_a_missing_port_fails_clearly(tmp_path):
    image = tmp_path / "x.bin"
    image.write_bytes(b"\xe9" + b"\0" * 255)
    r = subprocess.run(["./deploy.sh", "flash", "--port", "/dev/nonexistent", "--firmware", str(image)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "deploy: error: serial port /dev/nonexistent does not exist" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_flash_with_a_missing_image_fails_clearly():
    r = subprocess.run(["./deploy.sh", "flash", "--port", "/dev/nonexistent", "--firmware", "x.bin"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "firmware image x.bin not found" in r.stderr and "ESP32_GENERIC" in r.stderr, r.stderr


def test_flash_when_esptool_finds_no_chip_fails_clearly(tmp_path):
    image = tmp_path / "x.bin"
    image.write_bytes(b"\xe9" + b"\0" * 255)
    r = subprocess.run([sys.executable, "-m", "tools.deploy", "flash", "--port", "/dev/null",
                        "--firmware", str(image)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "esptool could not talk to a chip on /dev/null" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("chip,offset", [
    ("ESP32-D0WD-V3", 0x1000), ("ESP32-D0WDQ6", 0x1000), ("ESP32-PICO-D4", 0x1000),
    ("ESP32-S2FH4", 0x1000), ("ESP32-S3", 0x0), ("ESP32-C3", 0x0), ("ESP32-C6", 0x0),
    ("ESP8266EX", None),
])
def test_image_offset_follows_the_chip(chip, offset):
    assert chip_offset(chip) == offset
