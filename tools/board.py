"""The virtual board: the MicroPython unix port behind a TCP serial line, for mpremote.

    python -m tools.board start --flash DIR --port N [--heap 128K]
    python -m tools.board status --flash DIR
    python -m tools.board stop --flash DIR

`start` runs socat in the background:

    socat TCP-LISTEN:N,bind=127.0.0.1,reuseaddr,fork \\
          EXEC:<venv>/bin/micropython,pty,rawer,stderr,setsid,ctty

with DIR as the working folder and MICROPYPATH=.frozen:DIR:DIR/lib, so DIR is
the board's flash root (as / and /lib are on sys.path on an ESP32). Every TCP
connection gets a fresh unix port on a raw PTY: mpremote's raw REPL, `fs cp`,
`fs ls`, `exec` work (`mpremote connect socket://127.0.0.1:N resume ...`); a
soft reset (Ctrl-D) ends that process only and the next connection gets a new
one, like a board after a reset, with the files still in DIR.
DIR/.board.json records pid, port and flash; DIR/.board.log has socat's output.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from tools.proc import free_port, micropython

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE_FILE = ".board.json"
LOG_FILE = ".board.log"


def _listening(port, timeout=0.3):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _children(pid):
    """The pids whose parent is `pid` (Linux /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(name))
    return out


def _descendants(pid):
    found, todo = [], [pid]
    while todo:
        for c in _children(todo.pop()):
            found.append(c)
            todo.append(c)
    return found


def _kill(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass


def read_state(flash):
    try:
        with open(os.path.join(flash, STATE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class VirtualBoard:
    """`VirtualBoard(flash, port).start()` ... `.stop()`; `url` is mpremote's device name."""

    def __init__(self, flash, port=None, heap=None):
        self.flash = os.path.abspath(str(flash))
        self.port = port or free_port()
        self.heap = heap
        self.proc = None
        self.pid = None

    @property
    def url(self):
        return "socket://127.0.0.1:%d" % self.port

    def command(self):
        exe = micropython()
        if not exe:
            raise SystemExit("board: no micropython binary; run ./deploy.sh setup")
        socat = shutil.which("socat")
        if not socat:
            raise SystemExit("board: socat not found; run ./deploy.sh setup")
        for path in (exe, self.flash):
            bad = set(path) & set(",:!'\"\\ ")
            if bad:
                raise SystemExit("board: path %r has characters socat cannot pass (%s)" % (path, "".join(bad)))
        prog = exe + (" -X heapsize=" + self.heap if self.heap else "")
        return [socat, "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % self.port,
                "EXEC:%s,pty,rawer,stderr,setsid,ctty" % prog]

    def env(self):
        return dict(os.environ, MICROPYPATH=":".join((".frozen", self.flash, os.path.join(self.flash, "lib"))))

    def start(self, timeout=10):
        os.makedirs(self.flash, exist_ok=True)
        st = read_state(self.flash)
        if st and _alive(st["pid"]):
            raise SystemExit("board: already running in %s (pid %d, port %d); stop it first" % (
                self.flash, st["pid"], st["port"]))
        if _listening(self.port):
            raise SystemExit("board: port %d is already in use" % self.port)
        log = open(os.path.join(self.flash, LOG_FILE), "ab")
        try:
            self.proc = subprocess.Popen(self.command(), cwd=self.flash, env=self.env(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("board: socat did not start listening on port %d; see %s" % (
                    self.port, os.path.join(self.flash, LOG_FILE)))
            time.sleep(0.05)
        with open(os.path.join(self.flash, STATE_FILE), "w") as f:
            json.dump({"pid": self.pid, "port": self.port, "flash": self.flash, "url": self.url}, f)
        return self

    @classmethod
    def attach(cls, flash):
        """The board recorded in flash/.board.json, or None when none is running there."""
        st = read_state(os.path.abspath(str(flash)))
        if not st or not _alive(st["pid"]):
            return None
        b = cls(st["flash"], st["port"])
        b.pid = st["pid"]
        return b

    def running(self):
        return self.pid is not None and _alive(self.pid)

    def stop(self, timeout=5):
        """Stop socat and every unix port it started (by pid); remove .board.json."""
        if self.pid is not None:
            victims = [self.pid] + _descendants(self.pid)
            _kill(victims, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            if self.proc is not None:
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            while any(_alive(p) for p in victims) and time.monotonic() < deadline:
                time.sleep(0.05)
            _kill([p for p in victims if _alive(p)], signal.SIGKILL)
            if self.proc is not None:
                try:
                    self.proc.wait(2)
                except subprocess.TimeoutExpired:
                    pass
        st = read_state(self.flash)
        if st is None or st.get("pid") == self.pid:
            try:
                os.remove(os.path.join(self.flash, STATE_FILE))
            except OSError:
                pass
        self.pid = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    p = argparse.ArgumentParser(prog="board", description="the virtual board (unix port behind socat)")
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument("--flash", required=True, help="the board's flash root (a folder)")
    p.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (start; default: a free one)")
    p.add_argument("--heap", help="the unix port's -X heapsize, e.g. 128K")
    a = p.parse_args(argv)
    flash = os.path.abspath(a.flash)
    if a.action == "start":
        b = VirtualBoard(flash, a.port, a.heap).start()
        print("board: started in %s (socat pid %d); connect with: mpremote connect %s resume ..." % (
            flash, b.pid, b.url))
        print("board: deploy with: ./deploy.sh deploy --port %s --config DIR" % b.url)
        return 0
    b = VirtualBoard.attach(flash)
    if a.action == "status":
        if b is None:
            print("board: not running in %s" % flash)
            return 1
        print("board: running in %s: pid %d, %s (%s)" % (
            flash, b.pid, b.url, "listening" if _listening(b.port) else "NOT listening"))
        return 0
    if b is None:
        print("board: not running in %s" % flash)
        st = read_state(flash)
        if st:
            os.remove(os.path.join(flash, STATE_FILE))
        return 0
    pid, port = b.pid, b.port
    b.stop()
    print("board: stopped in %s (pid %d, port %d)" % (flash, pid, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
