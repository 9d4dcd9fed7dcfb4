"""firmware.store on a real LittleFS (os.VfsLfs2 over lfs_blockdev.RamFlash): power cuts and wear.

MicroPython unix port only; run by test_store_powercut.py:

    micropython host_tests/mp_store_powercut.py [powercut|wear|all] [stride]

Prints `RESULT <name> <value>` lines, and `FAIL <op> <mode> <what>` for a
broken invariant.

powercut: a workload (a boot, 200 message ids with block=10, 20 sequence writes
on 3 routes, a kv flush, a clean reboot halfway) runs from an empty, freshly
formatted 64 x 4 KB image. A clean run counts its N flash ops (programs +
erases). Then for every k in 0..N-1 (every `stride`-th one past the first 200
if a stride is given) the workload runs again on a fresh copy of the empty
image and the device takes two pictures of the flash at op k: op k not done,
and op k half done. Each picture is a power cut: it is mounted as a new
filesystem, a new Store loads it, and these must hold:

  (clean) the clean run's own ids are one epoch and strictly increasing
  mount   os.VfsLfs2 mounts it (the constructor raises if LittleFS can't)
  load    Store.load() gives a state and nothing raises
  dat     state.dat, when present, is whole (JSON line + right CRC32)
  epoch   once any write had returned before the cut, the epoch is the same
          (a new epoch would mean the saved state was lost)
  ids     the next id is above every id handed out before the cut
  seq     each route's last_sequence is the last value whose set_sequence
          returned before the cut, or the value being written at the cut
  kv      a put+flush that returned before the cut is still there
  after   the recovered store can write again, and that write survives
          another unmount/mount
  nor     LittleFS never programmed over bits that were not erased

wear: see wear() below.
"""
import os
import sys
import time

from firmware import compat
from firmware.store import Store, _decode
from lfs_blockdev import RamFlash

MNT = "/flash"
ROUTES = ("rte_relay0000000000000000000001", "rte_dimmer000000000000000000001",
          "rte_valve0000000000000000000001")
CUT_BLOCKS = 64
IDS = 200  # message ids in the power-cut workload (block=10: 20 block writes)
_mounted = [False]


def mount(dev):
    fs = os.VfsLfs2(dev)  # mounts LittleFS; OSError if it cannot
    os.mount(fs, MNT)
    _mounted[0] = True


def umount():
    if _mounted[0]:
        os.umount(MNT)
        _mounted[0] = False


def split(mid):
    e, n = mid.split("-")
    return e, int(n)


def empty_image(blocks):
    dev = RamFlash(blocks)
    os.VfsLfs2.mkfs(dev)
    return bytes(dev.data)


def workload(dev, log):
    """Every call is logged as (kind, ops before, ops after, ...)."""
    s = Store(MNT, block=10)
    s.load()
    for i in range(IDS):
        if i == IDS // 2:  # a clean reboot: the rest of the block is skipped
            s = Store(MNT, block=10)
            s.load()
        b = dev.ops
        mid = s.next_message_id()
        log.append(("id", b, dev.ops, mid))
        if i % 10 == 5:
            r = ROUTES[(i // 10) % len(ROUTES)]
            b = dev.ops
            s.set_sequence(r, 100 + i)
            log.append(("seq", b, dev.ops, r, 100 + i))
        if i == 12:
            b = dev.ops
            s.put("relay", True)
            s.flush()
            log.append(("kv", b, dev.ops))


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def check(img, k, log, seen):
    """The invariants on the picture `img` of a cut at op k; a list of what broke.
    `seen` counts what the cut left (torn .tmp, .tmp taken, old/new sequence...)."""
    errs = []

    def saw(what):
        seen[what] = seen.get(what, 0) + 1
    done = [e for e in log if e[2] <= k]                 # returned before op k started
    flight = [e for e in log if e[1] <= k < e[2]]        # op k fell inside this call
    dev = RamFlash(CUT_BLOCKS, image=img)
    try:
        mount(dev)
    except OSError as e:
        return ["mount: %r" % (e,)]
    try:
        try:
            with open(MNT + "/state.dat", "rb") as f:
                raw = f.read()
        except OSError:
            raw = None
        if raw is not None and _decode(raw) is None:
            errs.append("dat: state.dat is torn (%d bytes)" % len(raw))
        tmp = None
        if exists(MNT + "/state.tmp"):
            with open(MNT + "/state.tmp", "rb") as f:
                tmp = _decode(f.read())
            saw("tmp_whole" if tmp else "tmp_torn")
        if raw is None:
            saw("no_dat")
        s = Store(MNT, block=10)
        st = s.load()
        if tmp is not None and not exists(MNT + "/state.tmp"):
            saw("tmp_taken")
        if not isinstance(st, dict):
            errs.append("load: no state")
        ids = [split(e[3]) for e in log if e[0] == "id"]
        epoch = ids[0][0] if ids else None
        before = [split(e[3])[1] for e in done if e[0] == "id"]
        if not done and s.epoch != epoch:
            saw("fresh_epoch")
        if done and s.epoch != epoch:
            errs.append("epoch: %s became %s after %d writes" % (epoch, s.epoch, len(done)))
        mid = s.next_message_id()
        e2, n2 = split(mid)
        if e2 == epoch and before and n2 <= max(before):
            errs.append("ids: next %d <= %d handed out before the cut" % (n2, max(before)))
        for r in ROUTES:
            persisted = [e[4] for e in done if e[0] == "seq" and e[3] == r]
            ok = [persisted[-1] if persisted else -1]
            ok += [e[4] for e in flight if e[0] == "seq" and e[3] == r]
            got = s.last_sequence(r)
            if len(ok) > 1:
                saw("seq_in_flight_new" if got == ok[1] else "seq_in_flight_old")
            if got not in ok:
                errs.append("seq: %s is %d, expected one of %r" % (r, got, ok))
        if any(e[0] == "kv" for e in done) and s.get("relay") is not True:
            errs.append("kv: relay lost")
        s.set_sequence(ROUTES[0], 10000)
        umount()
        mount(dev)
        s2 = Store(MNT, block=10)
        s2.load()
        if s2.epoch != s.epoch or s2.last_sequence(ROUTES[0]) != 10000:
            errs.append("after: write after recovery lost")
        if split(s2.next_message_id())[1] <= n2:
            errs.append("after: id reused after recovery")
        if dev.not_erased:
            errs.append("nor: %d bytes programmed over non-erased bits" % dev.not_erased)
    except Exception as e:  # noqa: BLE001 - any exception is an invariant failure
        errs.append("raised: %r" % (e,))
    finally:
        umount()
    return errs


def ids_ok(log):
    """The ids a run handed out: one epoch, strictly increasing."""
    ids = [split(e[3]) for e in log if e[0] == "id"]
    return all(a[0] == b[0] and b[1] > a[1] for a, b in zip(ids, ids[1:]))


def run_once(empty, cut_at):
    dev = RamFlash(CUT_BLOCKS, image=empty)
    dev.cut_at = cut_at
    log = []
    mount(dev)
    try:
        workload(dev, log)
    finally:
        umount()
    return dev, log


def powercut(stride):
    empty = empty_image(CUT_BLOCKS)
    clean, clean_log = run_once(empty, -1)
    n = clean.ops
    print("RESULT clean_ops %d" % n)
    print("RESULT clean_progs %d" % clean.progs)
    print("RESULT clean_erases %d" % clean.erases)
    print("RESULT clean_state_writes %d" % sum(1 for e in clean_log if e[2] > e[1]))
    print("RESULT clean_metadata_erases %d" % (clean.erase_count[0] + clean.erase_count[1]))
    if not ids_ok(clean_log):
        failures_clean = 1
        print("FAIL - clean ids: the workload itself handed out an id twice")
    else:
        failures_clean = 0
    ks = [k for k in range(n) if k < 200 or stride <= 1 or k % stride == 0]
    tested = skipped = 0
    failures = failures_clean
    nmin = nmax = n
    shown = 0
    seen = {}
    for k in ks:
        dev, log = run_once(empty, k)
        nmin, nmax = min(nmin, dev.ops), max(nmax, dev.ops)
        if dev.snap is None:  # this run had fewer ops than k (op counts could vary between runs)
            skipped += 1
            continue
        for mode, img in (("drop", dev.snap), ("half", dev.snap_half)):
            tested += 1
            errs = check(img, k, log, seen)
            if errs:
                failures += 1
                if shown < 30:
                    shown += 1
                    print("FAIL %d %s %s" % (k, mode, "; ".join(errs)))
    # and the flash as the clean run left it
    tested += 1
    errs = check(bytes(clean.data), n, clean_log, seen)
    if errs:
        failures += 1
        print("FAIL %d end %s" % (n, "; ".join(errs)))
    print("RESULT ops_range %d %d" % (nmin, nmax))
    print("RESULT cut_points %d" % len(ks))
    print("RESULT cuts_tested %d" % tested)
    print("RESULT cuts_skipped %d" % skipped)
    print("RESULT invariant_failures %d" % failures)
    for key in sorted(seen):
        print("RESULT seen_%s %d" % (key, seen[key]))


def wear(ids=10000, blocks=256, block=100):
    """Flash wear of message ids on a 1 MB LittleFS (256 x 4 KB), Store(block=100).

    Assumptions for the lifetime figure: 1 message/s, forever; NOR flash good
    for 100,000 erase cycles per 4 KB sector (ESP32 SPI flash datasheets);
    LittleFS spreads erases over all the blocks that are not in use (its
    allocator walks the whole disk, and metadata pairs move every 100 erases:
    block_cycles=100 in MicroPython's VfsLfs2), so a sector wears at
    erases/s / free blocks. The state file has 3 routes' sequence numbers (as
    on a gateway with 3 command routes). A sequence write (one per command
    applied) is a whole state write too: it is measured apart, per write, and
    the lifetime is also given with 1 command/min and 1 command/s on top.
    """
    dev = RamFlash(blocks)
    os.VfsLfs2.mkfs(dev)
    mount(dev)
    try:
        s = Store(MNT, block=block)
        s.load()
        for i, r in enumerate(ROUTES):
            s.set_sequence(r, 1000000 + i)
        p0, e0, b0, w0 = dev.progs, dev.erases, dev.prog_bytes, s.writes
        hot0 = list(dev.erase_count)
        for _ in range(ids):
            s.next_message_id()
        progs, erases, pbytes = dev.progs - p0, dev.erases - e0, dev.prog_bytes - b0
        writes = s.writes - w0
        hot = max(c - c0 for c, c0 in zip(dev.erase_count, hot0))
        spread = sum(1 for c, c0 in zip(dev.erase_count, hot0) if c > c0)
        # one sequence write, on its own
        p1, e1 = dev.progs, dev.erases
        n = 50
        for i in range(n):
            s.set_sequence(ROUTES[0], 2000000 + i)
        seq_progs, seq_erases = (dev.progs - p1) / n, (dev.erases - e1) / n
        free = os.statvfs(MNT)[3]
    finally:
        umount()
    per = 1000 / ids
    print("RESULT wear_ids %d" % ids)
    print("RESULT wear_block %d" % block)
    print("RESULT state_writes_per_1000 %.1f" % (writes * per))
    print("RESULT progs_per_1000 %.1f" % (progs * per))
    print("RESULT erases_per_1000 %.1f" % (erases * per))
    print("RESULT prog_bytes_per_1000 %d" % (pbytes * per))
    print("RESULT blocks_erased %d" % spread)
    print("RESULT hottest_block_erases %d" % hot)
    print("RESULT free_blocks %d" % free)
    print("RESULT seq_write_progs %.1f" % seq_progs)
    print("RESULT seq_write_erases %.1f" % seq_erases)
    cycles = 100000
    budget = cycles * free  # erases the free blocks can take, levelled

    def years(erases_per_s):
        return budget / erases_per_s / (365.25 * 86400) if erases_per_s else 1e9

    id_rate = erases / ids  # erases per second at 1 message/s
    print("RESULT lifetime_years %.0f" % years(id_rate))
    print("RESULT lifetime_years_plus_1_command_per_min %.0f" % years(id_rate + seq_erases / 60))
    print("RESULT lifetime_years_plus_1_command_per_s %.1f" % years(id_rate + seq_erases))
    # pessimistic: the hottest block keeps its rate and is never moved
    print("RESULT lifetime_years_hottest_block_unlevelled %.1f"
          % (cycles / (hot / ids) / (365.25 * 86400) if hot else 1e9))


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    stride = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    compat._quiet = True  # Store logs every torn .tmp it meets
    t = time.ticks_ms()
    if what in ("powercut", "all"):
        powercut(stride)
    if what in ("wear", "all"):
        wear()
    print("RESULT ms %d" % time.ticks_diff(time.ticks_ms(), t))


main()
