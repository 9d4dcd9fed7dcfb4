"""Compile the firmware to .mpy with mpy-cross.

    python -m tools.build [--out build/mpy] [--march xtensawin]

Writes OUT/firmware/**.mpy and copies boot.py and main.py (they stay source:
MicroPython runs them by name). Without --march the bytecode runs on any port
(the unix port's heap tests use it); the ESP32 build uses -march=xtensawin.
Prints one line per file and exits non-zero on the first compile error.
"""
import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mpy_cross():
    exe = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    return exe if os.path.exists(exe) else shutil.which("mpy-cross")


def sources():
    for folder, _, files in os.walk(os.path.join(ROOT, "firmware")):
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def build(out, march=None, quiet=False):
    """Compile every firmware module into `out`; return the list of .mpy paths."""
    cross = mpy_cross()
    if not cross:
        raise SystemExit("build: mpy-cross not found; run ./deploy.sh setup")
    made = []
    for rel in sorted(sources()):
        dst = os.path.join(out, rel[:-3] + ".mpy")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        cmd = [cross, "-O2", rel, "-o", dst]
        if march:
            cmd.insert(1, "-march=" + march)
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit("build: %s: %s" % (rel, (r.stderr or r.stdout).strip()))
        made.append(dst)
        if not quiet:
            print("  %-36s %6d bytes" % (rel[:-3] + ".mpy", os.path.getsize(dst)))
    for name in ("boot.py", "main.py"):
        shutil.copyfile(os.path.join(ROOT, name), os.path.join(out, name))
    return made


def main(argv=None):
    p = argparse.ArgumentParser(prog="build", description="compile firmware/ to .mpy")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "mpy"))
    p.add_argument("--march", help="e.g. xtensawin for the ESP32 (default: portable bytecode)")
    a = p.parse_args(argv)
    made = build(a.out, a.march)
    print("build: %d modules in %s" % (len(made), a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
