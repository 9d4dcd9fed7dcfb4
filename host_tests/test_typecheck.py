"""Static type check of the firmware against the ESP32 MicroPython stubs (mypy.ini).

The stubs (micropython-esp32-stubs + micropython-stdlib-stubs, see requirements.txt)
are installed loose into site-packages, where mypy cannot use them directly (see the
comment at the top of mypy.ini). typeshed_dir() assembles a typeshed layout from the
installed files, with symlinks, and mypy gets it as --custom-typeshed-dir.

Also runnable by hand, with extra mypy arguments or files:
    .venv/bin/python host_tests/test_typecheck.py [mypy args...]
"""
import os
import subprocess
import sys
import tempfile
from importlib import metadata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "mypy.ini")
PORT_STUBS = "micropython-esp32-stubs"
STDLIB_STUBS = "micropython-stdlib-stubs"


def _tops(dist):
    """Top-level names a distribution installed, and the directory it put them in."""
    tops = set()
    base = None
    for f in dist.files or ():
        parts = f.parts
        if parts[0].endswith(".dist-info") or parts[0] == "..":
            continue
        tops.add(parts[0])
        if base is None:
            base = str(dist.locate_file(parts[0]))[: -len(parts[0])]
    return tops, base


def typeshed_dir(dest):
    """Build a custom typeshed in `dest`: micropython-stdlib-stubs' stdlib/ and stubs/,
    plus every module of the port stubs (and the _mpy_shed helpers) as stdlib modules."""
    stdlib_tops, base = _tops(metadata.distribution(STDLIB_STUBS))
    port_tops, port_base = _tops(metadata.distribution(PORT_STUBS))
    src_stdlib = os.path.join(base, "stdlib")
    out = os.path.join(dest, "stdlib")
    os.makedirs(out)
    os.symlink(os.path.join(base, "stubs"), os.path.join(dest, "stubs"))
    for name in os.listdir(src_stdlib):
        if name != "VERSIONS":
            os.symlink(os.path.join(src_stdlib, name), os.path.join(out, name))
    with open(os.path.join(src_stdlib, "VERSIONS")) as f:
        versions = f.read()
    known = {line.split(":")[0].strip() for line in versions.splitlines()
             if ":" in line and not line.lstrip().startswith("#")}
    extra = [(port_base, t) for t in sorted(port_tops)
             if t.endswith(".pyi") or os.path.isdir(os.path.join(port_base, t))]
    extra += [(base, t) for t in sorted(stdlib_tops) if t.startswith("_mpy_shed")]
    added = []
    for where, top in extra:
        os.symlink(os.path.join(where, top), os.path.join(out, top))
        mod = top[:-4] if top.endswith(".pyi") else top
        if mod not in known:
            added.append("%s: 3.0-\n" % mod)
    with open(os.path.join(out, "VERSIONS"), "w") as f:
        f.write(versions.rstrip("\n") + "\n# added for %s\n" % PORT_STUBS + "".join(added))
    return dest


def run_mypy(args=()):
    with tempfile.TemporaryDirectory(prefix="ugate-typeshed-") as tmp:
        ts = typeshed_dir(os.path.join(tmp, "typeshed"))
        cmd = [sys.executable, "-m", "mypy", "--config-file", CONFIG,
               "--custom-typeshed-dir", ts, *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_firmware_typechecks_against_esp32_stubs():
    try:
        metadata.distribution(STDLIB_STUBS), metadata.distribution(PORT_STUBS)
        import mypy  # noqa: F401
    except (metadata.PackageNotFoundError, ImportError) as e:
        pytest.fail("type-check tooling missing (./deploy.sh setup installs requirements.txt): %s" % e)
    r = run_mypy()
    assert r.returncode == 0, "mypy failed (exit %d):\n%s%s" % (r.returncode, r.stdout, r.stderr)


if __name__ == "__main__":
    r = run_mypy(sys.argv[1:])
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    sys.exit(r.returncode)
