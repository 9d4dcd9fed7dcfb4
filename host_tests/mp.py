"""Run code on the MicroPython unix port from pytest (the `micropython` of the venv)."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "host_tests")


def binary():
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    return exe if os.path.exists(exe) else shutil.which("micropython")


def path(*extra):
    """MICROPYPATH for the firmware: .frozen (asyncio, tls...) stays first."""
    return ":".join((".frozen", ROOT, os.path.join(ROOT, "lib")) + extra)


def run(args, heap=None, cwd=None, timeout=120, extra_path=(), env=None):
    cmd = [binary()]
    if heap:
        cmd += ["-X", "heapsize=" + heap]
    e = dict(os.environ, MICROPYPATH=path(*extra_path))
    e.update(env or {})
    return subprocess.run(cmd + list(args), cwd=cwd or ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout)
