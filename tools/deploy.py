"""Put ugate on a board: flash MicroPython, deploy the firmware, watch it.

    python -m tools.deploy flash  --port /dev/ttyUSB0 --firmware ESP32_GENERIC-v1.24.1.bin [--baud 460800]
    python -m tools.deploy deploy --port /dev/ttyUSB0 [--config DIR] [--no-reset]
    python -m tools.deploy deploy --flash-root DIR [--config DIR]    # the virtual board in DIR
    python -m tools.deploy repl   --port P
    python -m tools.deploy logs   --port P [--reset] [--duration S]

A port is a serial device (`/dev/ttyUSB0`), `socket://127.0.0.1:N` (a virtual
board, `python -m tools.board`) or `virtual:DIR` (the virtual board whose
flash root is DIR; a temporary one is started when none runs there).

`deploy` asks the board what it is first (platform, .mpy version and native
architecture, whether hashlib.sha256 exists), then compiles firmware/ with
mpy-cross for it (`-march=xtensawin` on an ESP32, `rv32imc` on a C3/C6,
portable bytecode on the unix port), hashes the board's copies *on the
board*, and copies only what differs, in one mpremote session: firmware/**.mpy
to :firmware/, boot.py, main.py, and from --config DIR config.json,
secrets.json and the CA named by cloud.ca. Stale firmware files on the board
(a .py that would shadow its .mpy, a module that is gone) are removed. Without
hashlib.sha256 on the board it falls back to the manifest of the last deploy
(build/deploy-manifest.json). A real board is hard-reset afterwards so the new
firmware runs (--no-reset keeps it at the REPL).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

from tools import board as _board
from tools.build import ROOT, build, sources

MANIFEST = os.path.join(ROOT, "build", "deploy-manifest.json")
# sys.implementation._mpy >> 10: the native architecture (py/persistentcode.h)
ARCHS = ["none", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
         "xtensa", "xtensawin", "rv32imc", "rv64imc"]
ESP32_ARCHS = ("xtensa", "xtensawin", "rv32imc")


class DeployError(Exception):
    pass


def say(msg):
    print("deploy: " + msg, flush=True)


def tool(name):
    exe = os.path.join(os.path.dirname(sys.executable), name)
    exe = exe if os.path.exists(exe) else shutil.which(name)
    if not exe:
        raise DeployError("%s not found; run ./deploy.sh setup" % name)
    return exe


# --- ports -------------------------------------------------------------------

class Target:
    """Where to deploy: `url` for mpremote/pyserial; `board` is a temporary virtual board to stop."""

    def __init__(self, url, virtual, board=None):
        self.url, self.virtual, self.board = url, virtual, board

    def close(self):
        if self.board is not None:
            self.board.stop()
            self.board = None


def resolve(port, flash_root=None, start_temporary=True):
    if port is None and flash_root:
        port = "virtual:" + flash_root
    if not port:
        raise DeployError("no --port given (a serial device such as /dev/ttyUSB0, "
                          "socket://127.0.0.1:N or virtual:DIR)")
    if port.startswith("virtual:"):
        flash = os.path.abspath(port[len("virtual:"):])
        b = _board.VirtualBoard.attach(flash)
        if b is not None:
            say("virtual board in %s is running at %s" % (flash, b.url))
            return Target(b.url, True)
        if not start_temporary:
            raise DeployError("no virtual board runs in %s (./deploy.sh board start --flash %s --port N)"
                              % (flash, flash))
        b = _board.VirtualBoard(flash).start()
        say("started a temporary virtual board in %s at %s" % (flash, b.url))
        return Target(b.url, True, b)
    if port.startswith("socket://"):
        return Target(port, True)
    if port.startswith("/dev/") and not os.path.exists(port):
        raise DeployError("serial port %s does not exist: is the board plugged in? "
                          "(ls /dev/ttyUSB* /dev/ttyACM*, or: mpremote devs)" % port)
    return Target(port, False)


# --- mpremote ----------------------------------------------------------------

def mpremote(url, args, timeout, capture=False):
    cmd = [tool("mpremote"), "connect", url, "resume"] + list(args)
    try:
        r = subprocess.run(cmd, cwd=ROOT, timeout=timeout, stdin=subprocess.DEVNULL,
                           capture_output=capture, text=True)
    except subprocess.TimeoutExpired:
        raise DeployError("mpremote did not finish within %d s (%s)" % (timeout, url))
    if r.returncode:
        detail = ((r.stderr or "") + (r.stdout or "")).strip().splitlines() if capture else []
        raise DeployError("mpremote failed on %s (exit %d)%s" % (
            url, r.returncode, (": " + detail[-1]) if detail else ""))
    return r.stdout if capture else None


PROBE = r"""
import os, sys
try:
    import hashlib, binascii
    H = hashlib.sha256
except Exception:
    H = None
_i = sys.implementation
print('P', sys.platform, getattr(_i, '_mpy', 0), '.'.join(str(x) for x in _i.version[:3]), int(H is not None))
for d in %(dirs)r:
    try:
        os.mkdir(d)
    except OSError:
        pass
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return '-'
    d = H()
    while True:
        b = f.read(1024)
        if not b:
            break
        d.update(b)
    f.close()
    return binascii.hexlify(d.digest()).decode()
for p in %(files)r:
    try:
        os.stat(p)
        print('H', p, _h(p) if H else '?')
    except OSError:
        print('H', p, '-')
def _w(d):
    for e in os.ilistdir(d):
        q = d + '/' + e[0]
        if os.stat(q)[0] & 0x4000:
            _w(q)
        else:
            print('F', q)
_w('firmware')
"""


def probe(url, dirs, files):
    """Ask the board what it is, make `dirs`, hash `files`; returns (info, {path: sha|None}, [firmware files])."""
    out = mpremote(url, ["exec", PROBE % {"dirs": dirs, "files": files}], timeout=60, capture=True)
    info, hashes, present = None, {}, []
    for line in out.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "P" and len(parts) == 5:
            mpy = int(parts[2])
            info = {"platform": parts[1], "mpy": mpy, "mpy_version": mpy & 0xFF,
                    "arch": ARCHS[mpy >> 10] if (mpy >> 10) < len(ARCHS) else "?",
                    "version": parts[3], "sha256": parts[4] == "1"}
        elif parts[0] == "H" and len(parts) == 3:
            hashes[parts[1]] = None if parts[2] in ("-", "?") else parts[2]
            if parts[2] == "-":
                hashes[parts[1]] = "missing"
        elif parts[0] == "F" and len(parts) == 2:
            present.append(parts[1])
    if info is None:
        raise DeployError("the board did not answer the probe; its output was:\n" + out)
    return info, hashes, present


# --- deploy ------------------------------------------------------------------

def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def config_files(config_dir):
    """[(local, remote)] for config.json, secrets.json and the CA named by cloud.ca."""
    cfg_path = os.path.join(config_dir, "config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except OSError:
        raise DeployError("%s not found (python -m tools.provision DIR writes one)" % cfg_path)
    except ValueError as e:
        raise DeployError("%s: not JSON: %s" % (cfg_path, e))
    out = [(cfg_path, "config.json")]
    sec = os.path.join(config_dir, "secrets.json")
    if not os.path.exists(sec):
        raise DeployError("%s not found: the board needs its client_secret" % sec)
    out.append((sec, "secrets.json"))
    ca = (cfg.get("cloud") or {}).get("ca")
    if not isinstance(ca, str) or not ca:
        raise DeployError("%s: cloud.ca is missing" % cfg_path)
    if ca.startswith("/") or ".." in ca.split("/"):
        raise DeployError("%s: cloud.ca must be a path inside the flash root, got %r" % (cfg_path, ca))
    if not os.path.exists(os.path.join(config_dir, ca)):
        raise DeployError("the CA file %s named by cloud.ca is not in %s" % (ca, config_dir))
    out.append((os.path.join(config_dir, ca), ca))
    return out


def planned_remote_firmware(prebuilt=None):
    if prebuilt is None:
        return ["firmware/" + os.path.relpath(p, "firmware")[:-3].replace(os.sep, "/") + ".mpy"
                for p in sorted(sources())]
    found = []
    for folder, _, files in os.walk(os.path.join(prebuilt, "firmware")):
        for name in files:
            if name.endswith(".mpy"):
                found.append(os.path.relpath(os.path.join(folder, name), prebuilt).replace(os.sep, "/"))
    if not found:
        raise DeployError("no firmware/**.mpy in %s (python -m tools.build --out %s)" % (prebuilt, prebuilt))
    return sorted(found)


def load_manifest():
    try:
        with open(MANIFEST) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save_manifest(data):
    os.makedirs(os.path.dirname(MANIFEST), exist_ok=True)
    with open(MANIFEST + ".tmp", "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(MANIFEST + ".tmp", MANIFEST)


def deploy(port=None, config=None, flash_root=None, reset=True, out=None, prebuilt=None):
    """Returns (unchanged, copied, removed). prebuilt: a tools.build output folder to copy
    as it is (no compiling; it must suit the board)."""
    t0 = time.monotonic()
    fw_remote = planned_remote_firmware(prebuilt)
    extra = config_files(config) if config else []
    target = resolve(port, flash_root)
    try:
        return _deploy(target, fw_remote, extra, reset, out, prebuilt, t0, bool(config))
    finally:
        target.close()


def _deploy(target, fw_remote, extra, reset, out, prebuilt, t0, with_config):
    url = target.url
    remote_files = fw_remote + ["boot.py", "main.py"] + [r for _, r in extra]
    check = remote_files + ([] if with_config else ["config.json", "secrets.json"])
    dirs = sorted({"/".join(r.split("/")[:i]) for r in remote_files
                   for i in range(1, r.count("/") + 1)}, key=lambda d: (d.count("/"), d))
    say("asking the board at %s what it is (and hashing its files)" % url)
    info, device_hashes, present = probe(url, dirs, check)
    say("board: MicroPython %s on %s, .mpy v%d, native arch %s, hashlib.sha256 %s" % (
        info["version"], info["platform"], info["mpy_version"], info["arch"],
        "yes" if info["sha256"] else "no (using the local manifest)"))
    if info["mpy_version"] != 6:
        raise DeployError("the board's MicroPython reads .mpy v%d; mpy-cross makes v6 "
                          "(flash MicroPython 1.23 or newer)" % info["mpy_version"])
    march = info["arch"] if info["arch"] in ESP32_ARCHS else None
    if not target.virtual and march is None:
        say("warning: %s is not an ESP32 (arch %s): compiling portable bytecode" % (url, info["arch"]))
    if prebuilt:
        out = prebuilt
        say("build: using the prebuilt %s as it is (%d modules)" % (out, len(fw_remote)))
    else:
        out = out or os.path.join(ROOT, "build", "deploy-" + (march or "bytecode"))
        say("build: compiling firmware/ with mpy-cross %s into %s" % (
            "-march=" + march if march else "(portable bytecode)", os.path.relpath(out, ROOT)))
        build(out, march, quiet=True)
    local = [(os.path.join(out, r), r) for r in fw_remote + ["boot.py", "main.py"]] + extra

    manifest_all = load_manifest()
    manifest = manifest_all.get(url, {})
    todo, unchanged = [], 0
    for src, dst in local:
        want = sha256(src)
        have = device_hashes.get(dst)
        if have is None:  # no hashlib on the board: trust the last deploy's manifest
            have = manifest.get(dst)
        if have == want:
            unchanged += 1
        else:
            todo.append((src, dst, want))
    stale = [p for p in present if p not in fw_remote]
    for name in ("config.json", "secrets.json"):
        if device_hashes.get(name) == "missing":
            say("warning: the board has no %s: deploy with --config DIR" % name)

    args = []
    for src, dst, _ in todo:
        args += ["fs", "cp", src, ":" + dst, "+"]
    if stale:
        args += ["exec", "import os\nfor p in %r:\n    os.remove(p)\n" % stale, "+"]
        for p in stale:
            say("removing stale %s from the board" % p)
    # Proof that the board loads what was copied (.mpy version and arch).
    args += ["exec", "import firmware; print('deploy: the board imports firmware', firmware.VERSION, "
                     "'from', firmware.__file__)"]
    if reset and not target.virtual:
        args += ["+", "reset"]
    say("copying %d file(s) in one mpremote session" % len(todo) if todo else "nothing to copy")
    mpremote(url, args, timeout=120 + 10 * len(todo))
    for _, dst, want in todo:
        manifest[dst] = want
    for src, dst in local:
        manifest.setdefault(dst, sha256(src))
    manifest_all[url] = manifest
    save_manifest(manifest_all)
    say("unchanged: %d, copied: %d, removed: %d (%.1f s)" % (
        unchanged, len(todo), len(stale), time.monotonic() - t0))
    if reset and not target.virtual:
        say("the board was reset and runs the new firmware: ./deploy.sh logs --port %s" % url)
    elif target.virtual:
        say("run it: ./deploy.sh logs --port %s --reset (or ./deploy.sh run FLASH-DIR)" % url)
    return unchanged, len(todo), len(stale)


# --- flash -------------------------------------------------------------------

def chip_offset(chip_line):
    """The image offset for the chip esptool reported: 0x1000 (ESP32, S2) or 0x0 (S3, C3, C6, H2...)."""
    chip = chip_line.upper()
    if re.match(r"ESP32-(S3|C\d+|H\d+|P4)", chip) or re.match(r"ESP8684", chip):
        return 0x0
    if chip.startswith("ESP32"):
        return 0x1000
    return None


def _esptool(args, timeout):
    cmd = [tool("esptool")] + args
    print("deploy: $ " + " ".join(os.path.basename(cmd[0]) if i == 0 else c for i, c in enumerate(cmd)),
          flush=True)
    lines = []
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            print("  " + line.rstrip("\n"), flush=True)
            if time.monotonic() > deadline:
                p.kill()
                break
        rc = p.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        p.kill()
        raise DeployError("esptool did not finish within %d s" % timeout)
    return rc, lines


def flash(port, firmware, baud=460800):
    if not os.path.isfile(firmware):
        raise DeployError("firmware image %s not found (download ESP32_GENERIC from "
                          "https://micropython.org/download/ESP32_GENERIC/)" % firmware)
    if port.startswith("/dev/") and not os.path.exists(port):
        raise DeployError("serial port %s does not exist: is the board plugged in (USB data cable)? "
                          "Look with: ls /dev/ttyUSB* /dev/ttyACM* (or: mpremote devs)" % port)
    say("1/3 checking the chip on %s" % port)
    rc, lines = _esptool(["--port", port, "chip-id"], timeout=60)
    text = "\n".join(lines)
    if rc:
        hint = next((l for l in lines if "error" in l.lower()), "exit %d" % rc)
        raise DeployError("esptool could not talk to a chip on %s: %s (hold BOOT while it connects "
                          "if the board does not enter the bootloader by itself)" % (port, hint.strip()))
    m = re.search(r"(?:Chip type:|Chip is)\s*(\S+)", text)
    if not m:
        raise DeployError("esptool did not report a chip type on %s" % port)
    chip = m.group(1)
    offset = chip_offset(chip)
    if offset is None:
        raise DeployError("%s is a %s, not an ESP32: ugate needs an ESP32" % (port, chip))
    name = os.path.basename(firmware).upper()
    fam = re.match(r"ESP32-(S2|S3|C3|C6)", chip.upper())
    if fam and "ESP32_GENERIC" in name and "GENERIC_" + fam.group(1) not in name:
        raise DeployError("%s is for another chip than this %s (get ESP32_GENERIC_%s)" % (
            firmware, chip, fam.group(1)))
    if not fam and re.search(r"GENERIC_(S2|S3|C3|C6)", name):
        raise DeployError("%s is not for a classic ESP32 (this chip is %s; get ESP32_GENERIC)" % (firmware, chip))
    say("chip: %s -> image offset 0x%x" % (chip, offset))
    say("2/3 erasing the flash")
    rc, _ = _esptool(["--port", port, "erase-flash"], timeout=180)
    if rc:
        raise DeployError("erase-flash failed (exit %d)" % rc)
    say("3/3 writing %s at 0x%x" % (firmware, offset))
    rc, _ = _esptool(["--port", port, "--baud", str(baud), "write-flash", "0x%x" % offset, firmware],
                     timeout=300)
    if rc:
        raise DeployError("write-flash failed (exit %d); try a lower --baud (115200)" % rc)
    say("done: MicroPython is on the board. Next: ./deploy.sh deploy --port %s --config DIR" % port)
    return chip, offset


# --- repl, logs --------------------------------------------------------------

def repl(port):
    target = resolve(port, start_temporary=False)
    os.execv(tool("mpremote"), [tool("mpremote"), "connect", target.url, "resume", "repl"])


def logs(port, reset=False, duration=None, until=None, out=sys.stdout):
    """Follow the board's console. reset: restart the firmware first (a soft reboot on an
    ESP32; on the virtual board `import boot, main`). Returns True if `until` was seen."""
    import serial
    target = resolve(port, start_temporary=reset)
    try:
        s = serial.serial_for_url(target.url, baudrate=115200, timeout=0.2)
    except (serial.SerialException, OSError) as e:
        target.close()
        raise DeployError("cannot open %s: %s" % (target.url, e))
    seen = False
    try:
        if reset:
            s.write(b"\r\x03\x03\x02")  # interrupt, leave the raw REPL
            time.sleep(0.3)
            s.reset_input_buffer()
            if target.virtual:
                s.write(b"import boot, main\r")
                say("started the firmware on the virtual board (import boot, main)")
            else:
                s.write(b"\x04")  # soft reboot: boot.py then main.py
                say("soft reboot: boot.py and main.py run again")
        say("following %s (Ctrl-C stops)" % target.url)
        t0, buf = time.monotonic(), b""
        while duration is None or time.monotonic() - t0 < duration:
            data = s.read(512)
            if not data:
                continue
            buf += data
            *done, buf = buf.split(b"\n")
            for raw in done:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                out.write(line + "\n")
                out.flush()
                if until and until in line:
                    seen = True
                    return True
    except KeyboardInterrupt:
        pass
    finally:
        s.close()
        target.close()
    return seen


# --- command line ------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(prog="deploy", description="flash, deploy and watch a ugate board")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flash", help="erase the board and write a MicroPython image (esptool)")
    f.add_argument("--port", required=True)
    f.add_argument("--firmware", required=True, help="e.g. ESP32_GENERIC-20241129-v1.24.1.bin")
    f.add_argument("--baud", type=int, default=460800)
    d = sub.add_parser("deploy", help="compile and copy the firmware (and config) to the board")
    d.add_argument("--port")
    d.add_argument("--flash-root", help="the virtual board in this folder (instead of --port)")
    d.add_argument("--config", help="folder with config.json, secrets.json and the CA")
    d.add_argument("--no-reset", action="store_true", help="a real board stays at the REPL")
    d.add_argument("--prebuilt", help="copy this tools.build output folder instead of compiling")
    r = sub.add_parser("repl", help="the board's REPL (mpremote)")
    r.add_argument("--port", required=True)
    g = sub.add_parser("logs", help="follow the board's console output")
    g.add_argument("--port", required=True)
    g.add_argument("--reset", action="store_true", help="restart the firmware first")
    g.add_argument("--duration", type=float, help="stop after this many seconds")
    g.add_argument("--until", help="stop when a line contains this text (exit 1 if never seen)")
    a = p.parse_args(argv)
    try:
        if a.cmd == "flash":
            flash(a.port, a.firmware, a.baud)
        elif a.cmd == "deploy":
            if not a.port and not a.flash_root:
                p.error("deploy needs --port P or --flash-root DIR")
            deploy(a.port, a.config, a.flash_root, reset=not a.no_reset, prebuilt=a.prebuilt)
        elif a.cmd == "repl":
            repl(a.port)
        elif a.cmd == "logs":
            seen = logs(a.port, a.reset, a.duration, a.until)
            if a.until and not seen:
                return 1
    except DeployError as e:
        print("deploy: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
