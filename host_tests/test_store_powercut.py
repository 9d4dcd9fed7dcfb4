"""firmware.store on a real LittleFS: a power cut at every flash program/erase, and flash wear.

The work is done on the MicroPython unix port by mp_store_powercut.py: the
real os.VfsLfs2 (LittleFS v2, MicroPython's settings: 4 KB blocks, 32-byte
read/prog, block_cycles=100) over lfs_blockdev.RamFlash, a NOR-flash block
device in RAM that numbers every program and erase. For each op k of a
workload the flash is pictured with op k not done and half done; each picture
is mounted as if after the cut, loaded by a fresh Store and checked (see the
script's docstring for the invariants). Here: run it, read its RESULT lines.
"""
import os
import shutil

import pytest

import mp
import fault_report

SCRIPT = os.path.join(mp.HERE, "mp_store_powercut.py")
HEAP = "32M"  # a few 256 KB flash images at a time

pytestmark = pytest.mark.skipif(not mp.binary(), reason="no micropython unix port")


def _run(what, env=None):
    r = mp.run([SCRIPT, what], heap=HEAP, extra_path=(mp.HERE,), env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = {}
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            _, key, value = line.split(" ", 2)
            res[key] = value
    return res, r.stdout


def _num(res, key):
    return float(res[key].split()[0])


def test_power_cut_at_every_flash_op_mounts_and_state_is_valid():
    res, out = _run("powercut")
    print(out)
    ops = int(_num(res, "clean_ops"))
    assert ops >= 100, out                             # the workload really writes
    assert _num(res, "clean_metadata_erases") >= 1, out  # ...and a metadata compaction is cut too
    assert _num(res, "cuts_skipped") == 0, out
    assert _num(res, "cuts_tested") == 2 * ops + 1, out  # every op, not done and half done, + the end
    assert _num(res, "invariant_failures") == 0, out
    assert "FAIL " not in out, out
    # the cuts land in the windows that matter, not only between writes
    for seen in ("seen_tmp_torn", "seen_tmp_whole", "seen_tmp_taken",
                 "seen_seq_in_flight_old", "seen_seq_in_flight_new", "seen_fresh_epoch"):
        assert _num(res, seen) > 0, (seen, out)
    fault_report.record("power cut at every LittleFS program/erase", faults=int(_num(res, "cuts_tested")),
                        crashes=0, invalid_states=int(_num(res, "invariant_failures")),
                        notes="VfsLfs2 on a block device that stops mid-op; no message_id reused")


def test_flash_wear_per_1000_message_ids():
    """Store(block=100): one state write per 100 ids, each a bounded number of
    flash ops. The lifetime figures (1 message/s, 100k erase cycles per 4 KB
    sector, levelled over the free blocks of a 1 MB LittleFS) are printed by
    the script; see its wear() docstring for the assumptions."""
    res, out = _run("wear")
    print(out)
    assert _num(res, "wear_block") == 100
    assert _num(res, "state_writes_per_1000") == 10, out
    # a state write = a new .tmp (> 128 bytes with 3 routes: a data block, one
    # erase) + two metadata commits (create/close, rename); compaction rarely
    assert _num(res, "erases_per_1000") <= 2 * 10, out
    assert _num(res, "progs_per_1000") <= 10 * 10, out
    assert _num(res, "seq_write_erases") <= 2, out
    assert _num(res, "free_blocks") >= 250, out
    assert _num(res, "lifetime_years") >= 20, out
    fault_report.record("flash wear per 1000 message_ids", erases=_num(res, "erases_per_1000"),
                        programs=_num(res, "progs_per_1000"), lifetime_years_1msg_s=_num(res, "lifetime_years"),
                        notes="1 MB LittleFS, 100k cycles per sector")


_OPEN_TMP = 'f = open(self._tmp, "wb")'
_RENAME = '        os.rename(self._tmp, self._dat)\n        st["reserved"]'
_LINE = '            f.write(line)\n'
_RESUME = 'self._next = st["reserved"]'
MUTANTS = {
    # .dat written in place, no .tmp/rename. On LittleFS a file's new content
    # only shows at close (copy-on-write), so this is caught only where the
    # first open(O_CREAT) has committed an empty state.dat.
    "in_place": ((_OPEN_TMP, 'f = open(self._dat, "wb")'), (_RENAME, '        st["reserved"]')),
    # ...and with a flush between the JSON line and its CRC: torn state.dat,
    # the state (epoch, sequences) lost.
    "in_place_flushed": ((_OPEN_TMP, 'f = open(self._dat, "wb")'), (_RENAME, '        st["reserved"]'),
                         (_LINE, _LINE + '            f.flush()\n')),
    # off by one: a boot resumes at the last id of the reserved block, which
    # was handed out if the block was used up before the cut (or reboot)
    "resume_in_block": ((_RESUME, 'self._next = max(0, st["reserved"] - 1)'),),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_a_broken_store_is_caught(tmp_path, mutant):
    """The harness can fail: each mutant of store.py breaks an invariant somewhere."""
    src = open(os.path.join(mp.ROOT, "firmware", "store.py")).read()
    broken = src
    for old, new in MUTANTS[mutant]:
        if old not in broken:
            pytest.skip("store.py changed: update the mutation %r" % old)
        broken = broken.replace(old, new)
    shutil.copytree(os.path.join(mp.ROOT, "firmware"), str(tmp_path / "firmware"))
    (tmp_path / "firmware" / "store.py").write_text(broken)
    path = ":".join((".frozen", str(tmp_path), os.path.join(mp.ROOT, "lib"), mp.HERE))
    res, out = _run("powercut", env={"MICROPYPATH": path})
    print(out)
    assert _num(res, "invariant_failures") > 0, out
