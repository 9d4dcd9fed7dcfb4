"""Run code on the MicroPython unix port from pytest (the `micropython` of the venv)."""
import os
import subprocess

from tools.proc import micropython as binary  # the venv's micropython

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "host_tests")


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
