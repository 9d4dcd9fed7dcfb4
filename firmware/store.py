"""Flash state that survives a power cut at any point.

    from firmware.store import Store
    st = Store("/", block=100)
    st.load()                          # once at boot; never raises for bad files
    mid = st.next_message_id()         # "3fa9c01e-200": never reused, even after a crash
    if seq > st.last_sequence(route):  # drop stale or replayed commands
        st.set_sequence(route, seq)    # written at once
    st.put("relay", True); st.flush()  # small extras, written when flush() is called

File `<name>.dat`: one JSON line, then the CRC32 of that line as 8 hex digits:

    {"gen": 7, "epoch": "3fa9c01e", "reserved": 300, "seq": {"rte_relay...": 4}, "kv": {}}
    5d1f03a2

A write goes to `<name>.tmp`, is closed, then renamed over `<name>.dat`; the
rename is atomic on LittleFS and POSIX, so `.dat` is always a whole old or a
whole new state. If the cut falls after the `.tmp` is complete but before the
rename, load() finds a good `.tmp` with a higher `gen` and takes it.

Message ids are "<epoch>-<n>". The `epoch` is random (os.urandom) and made
whenever the state is created afresh, so ids stay unique after a wipe or a
corrupt file. `n` comes from RAM; `reserved` on flash is a high-water mark
moved forward one `block` at a time *before* any id of that block is handed
out, and a boot starts counting at `reserved`. So flash is written once per
`block` messages, and a crash only skips ids, never repeats them.

A failed write (OSError, e.g. flash full) is raised to the caller and the old
`.dat` is left as it was.
"""
import binascii
import json
import os

from firmware.compat import const, log

_TAG = "store"
_MAX_BYTES = const(8192)  # a bigger state file is garbage: don't try to hold it in RAM
_ENOENT = const(2)


def _decode(data):
    """The state dict in `data` (file bytes), or None if torn, corrupt or malformed."""
    i = data.find(b"\n")
    if i < 0:
        return None
    line = data[:i]
    if data[i + 1:].strip() != ("%08x" % (binascii.crc32(line) & 0xFFFFFFFF)).encode():
        return None
    try:
        st = json.loads(line)
    except ValueError:
        return None
    if not isinstance(st, dict):
        return None
    epoch = st.get("epoch")
    if not (isinstance(epoch, str) and len(epoch) == 8):
        return None
    for k in ("gen", "reserved"):
        v = st.get(k)
        if not isinstance(v, int) or v is True or v is False or v < 0:
            return None
    for k in ("seq", "kv"):
        if not isinstance(st.get(k), dict):
            return None
    return st


def _fresh():
    epoch = binascii.hexlify(os.urandom(4)).decode()
    return {"gen": 0, "epoch": epoch, "reserved": 0, "seq": {}, "kv": {}}


class Store:
    def __init__(self, root=".", block=100, name="state"):
        if root in ("", "."):
            base = name
        else:
            base = root + ("" if root.endswith("/") else "/") + name
        self._dat = base + ".dat"
        self._tmp = base + ".tmp"
        self._block = max(1, int(block))
        self._st = None
        self._next = 0      # next message number to hand out
        self._dirty = False
        self.writes = 0

    def _read(self, path):
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_BYTES + 1)
        except OSError as e:
            if e.args and e.args[0] != _ENOENT:  # ENOENT is the normal case for .tmp
                log(_TAG, "cannot read %s: %r" % (path, e))
            return None
        st = None if len(data) > _MAX_BYTES else _decode(data)
        if st is None:
            log(_TAG, "%s is corrupt (%d bytes), ignored" % (path, len(data)))
        return st

    def load(self):
        """Read the state. Bad or missing files give a fresh state with a new epoch."""
        dat = self._read(self._dat)
        tmp = self._read(self._tmp)
        st = dat
        if tmp is not None and (dat is None or tmp["gen"] > dat["gen"]):
            st = tmp
            log(_TAG, "recovered gen %d from %s" % (tmp["gen"], self._tmp))
            # Make it the .dat now, so a torn later write can't fall back to an older state.
            try:
                os.rename(self._tmp, self._dat)
            except OSError as e:
                log(_TAG, "cannot rename %s: %r" % (self._tmp, e))
        if st is None:
            st = _fresh()
            log(_TAG, "no saved state (first boot, or unreadable): new message_id epoch %s" % st["epoch"])
        self._st = st
        self._next = st["reserved"]
        self._dirty = False
        return st

    def _state(self):
        if self._st is None:
            self.load()
        return self._st

    def _save(self, reserved):
        st = self._st
        st["gen"] += 1  # bumped even if the write fails: a stray .tmp never shares a gen
        line = json.dumps({"gen": st["gen"], "epoch": st["epoch"], "reserved": reserved,
                           "seq": st["seq"], "kv": st["kv"]}).encode()
        f = open(self._tmp, "wb")
        self.writes += 1
        try:
            f.write(line)
            f.write(("\n%08x\n" % (binascii.crc32(line) & 0xFFFFFFFF)).encode())
        finally:
            f.close()
        os.rename(self._tmp, self._dat)
        st["reserved"] = reserved
        self._dirty = False

    @property
    def epoch(self):
        return self._state()["epoch"]

    def next_message_id(self):
        """A new "<epoch>-<n>". Raises OSError if a block could not be reserved."""
        st = self._state()
        n = self._next
        if n >= st["reserved"]:
            self._save(n + self._block)
        self._next = n + 1
        return "%s-%d" % (st["epoch"], n)

    def last_sequence(self, route_id):
        return self._state()["seq"].get(route_id, -1)

    def set_sequence(self, route_id, seq):
        """Record and write at once. On OSError the value stays in RAM and is
        retried by the next write (flush, another set_sequence, a new block)."""
        st = self._state()
        if st["seq"].get(route_id) == seq:
            return
        st["seq"][route_id] = seq
        self._dirty = True
        self._save(st["reserved"])

    def get(self, key, default=None):
        return self._state()["kv"].get(key, default)

    def put(self, key, value):
        """Keep a small JSON-able value; written by the next flush()."""
        kv = self._state()["kv"]
        if key not in kv or kv[key] != value:
            kv[key] = value
            self._dirty = True

    def flush(self):
        """Write now if anything changed (may raise OSError)."""
        if self._dirty:
            self._save(self._st["reserved"])
