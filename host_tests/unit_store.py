"""firmware.store: ids never reused, power-cut recovery, torn files. CPython and unix port."""
import binascii
import os

from firmware import compat
from firmware.store import Store
from fakes import exists as _exists, rmtree as _rmtree, tmpdir as _tmpdir


def _read(p):
    with open(p, "rb") as f:
        return f.read()


def _write(p, data):
    with open(p, "wb") as f:
        f.write(data)


def _split(mid):
    epoch, n = mid.split("-")
    return epoch, int(n)


def test_ids_unique_and_increasing_across_reloads():
    d = _tmpdir()
    try:
        seen = []
        writes = 0
        reloads = 5
        for boot in range(reloads):
            s = Store(d, block=10)
            s.load()
            for i in range(7 + 5 * boot):  # some boots end mid-block, some cross blocks
                seen.append(s.next_message_id())
            writes += s.writes
        epochs = set(_split(m)[0] for m in seen)
        assert len(epochs) == 1, epochs
        ns = [_split(m)[1] for m in seen]
        assert len(set(seen)) == len(seen)
        for a, b in zip(ns, ns[1:]):
            assert b > a, (a, b)
        assert writes <= reloads + len(seen) // 10 + 1, (writes, len(seen))
        assert len(seen[0]) <= 64  # the cloud's message_id_max_length
    finally:
        _rmtree(d)


def test_reload_skips_rest_of_block():
    d = _tmpdir()
    try:
        s = Store(d, block=10)
        s.load()
        assert [_split(s.next_message_id())[1] for _ in range(3)] == [0, 1, 2]
        assert s.writes == 1
        s2 = Store(d, block=10)
        s2.load()
        assert s2.epoch == s.epoch
        assert _split(s2.next_message_id())[1] == 10
        assert _split(s2.next_message_id())[1] == 11
        assert s2.writes == 1
    finally:
        _rmtree(d)


def test_block_written_once_per_block():
    d = _tmpdir()
    try:
        s = Store(d, block=10)
        s.load()
        for _ in range(25):
            s.next_message_id()
        assert s.writes == 3  # blocks 0-9, 10-19, 20-29
    finally:
        _rmtree(d)


def test_sequence_persists():
    d = _tmpdir()
    try:
        s = Store(d)
        s.load()
        assert s.last_sequence("rte_relay0000000000000000000001") == -1
        s.set_sequence("rte_relay0000000000000000000001", 4)
        assert s.writes == 1
        s.set_sequence("rte_relay0000000000000000000001", 4)  # unchanged: no write
        assert s.writes == 1
        s2 = Store(d)
        s2.load()
        assert s2.last_sequence("rte_relay0000000000000000000001") == 4
        assert s2.last_sequence("rte_dimmer000000000000000000001") == -1
    finally:
        _rmtree(d)


def test_put_get_flush():
    d = _tmpdir()
    try:
        s = Store(d)
        s.load()
        assert s.get("relay") is None
        assert s.get("relay", 7) == 7
        s.put("relay", True)
        assert s.get("relay") is True
        assert s.writes == 0
        s.flush()
        assert s.writes == 1
        s.flush()  # nothing changed
        s.put("relay", True)
        s.flush()
        assert s.writes == 1
        s2 = Store(d)
        s2.load()
        assert s2.get("relay") is True
    finally:
        _rmtree(d)


def test_file_format_json_line_and_crc():
    d = _tmpdir()
    try:
        s = Store(d, name="st")
        s.load()
        s.set_sequence("r", 1)
        assert not _exists(d + "/st.tmp")
        lines = _read(d + "/st.dat").split(b"\n")
        assert len(lines) == 3 and lines[2] == b""
        assert lines[1] == ("%08x" % (binascii.crc32(lines[0]) & 0xFFFFFFFF)).encode()
        import json
        st = json.loads(lines[0])
        assert st["seq"] == {"r": 1} and st["gen"] == 1 and len(st["epoch"]) == 8
    finally:
        _rmtree(d)


def test_crc_mismatch_detected():
    d = _tmpdir()
    try:
        s = Store(d)
        s.load()
        s.set_sequence("r", 5)
        data = _read(d + "/state.dat")
        bad = data.replace(b'"r": 5', b'"r": 6')
        assert bad != data
        _write(d + "/state.dat", bad)  # valid JSON, wrong CRC
        s2 = Store(d)
        s2.load()
        assert s2.last_sequence("r") == -1
        assert s2.epoch != s.epoch
    finally:
        _rmtree(d)


def test_corrupt_dat_recovers_from_tmp():
    d = _tmpdir()
    try:
        s = Store(d, block=10)
        s.load()
        s.set_sequence("r", 3)
        ids = [s.next_message_id() for _ in range(3)]
        # A cut after the .tmp was complete but before the rename, then a torn .dat.
        good = _read(d + "/state.dat")
        _write(d + "/state.tmp", good)
        _write(d + "/state.dat", good[:len(good) // 2])
        s2 = Store(d, block=10)
        s2.load()
        assert s2.last_sequence("r") == 3
        assert s2.epoch == s.epoch
        assert _split(s2.next_message_id())[1] > _split(ids[-1])[1]
        assert not _exists(d + "/state.tmp")
    finally:
        _rmtree(d)


def test_newer_tmp_wins_over_older_dat():
    d = _tmpdir()
    try:
        s = Store(d)
        s.load()
        s.set_sequence("r", 1)
        old = _read(d + "/state.dat")
        s.set_sequence("r", 2)
        new = _read(d + "/state.dat")
        _write(d + "/state.dat", old)
        _write(d + "/state.tmp", new)  # power cut between close and rename
        s2 = Store(d)
        s2.load()
        assert s2.last_sequence("r") == 2
        # promoted: a torn next write can't fall back to sequence 1
        assert _read(d + "/state.dat") == new and not _exists(d + "/state.tmp")
    finally:
        _rmtree(d)


def test_older_tmp_loses_to_newer_dat():
    d = _tmpdir()
    try:
        s = Store(d)
        s.load()
        s.set_sequence("r", 1)
        old = _read(d + "/state.dat")
        s.set_sequence("r", 2)
        _write(d + "/state.tmp", old)
        s2 = Store(d)
        s2.load()
        assert s2.last_sequence("r") == 2
    finally:
        _rmtree(d)


def test_both_corrupt_gives_fresh_epoch():
    d = _tmpdir()
    try:
        s = Store(d, block=10)
        s.load()
        s.set_sequence("r", 9)
        before = [s.next_message_id() for _ in range(15)]
        good = _read(d + "/state.dat")
        _write(d + "/state.dat", b"\xff" * 40)
        _write(d + "/state.tmp", good[:-5])
        s2 = Store(d, block=10)
        s2.load()  # must not raise
        assert s2.last_sequence("r") == -1
        after = [s2.next_message_id() for _ in range(15)]
        assert s2.epoch != s.epoch
        assert not set(before) & set(after)
        s3 = Store(d, block=10)  # and the fresh state itself is now durable
        s3.load()
        assert s3.epoch == s2.epoch
    finally:
        _rmtree(d)


def test_missing_files_fresh_state():
    d = _tmpdir()
    try:
        s = Store(d + "/", name="x")
        s.load()
        assert s.last_sequence("r") == -1 and s.get("k") is None and s.writes == 0
        assert len(s.epoch) == 8
        assert os.listdir(d) == []  # loading alone writes nothing
    finally:
        _rmtree(d)


def test_truncated_dat_at_every_offset_never_raises():
    d = _tmpdir()
    try:
        s = Store(d)
        s.load()
        s.put("k", [1, 2.5, "x"])
        s.set_sequence("rte_relay0000000000000000000001", 12)
        good = _read(d + "/state.dat")
        compat._quiet = True
        try:
            for i in range(len(good)):
                _write(d + "/state.dat", good[:i])
                t = Store(d)
                t.load()
                whole = i >= len(good) - 1  # only the final newline missing
                assert (t.get("k") == [1, 2.5, "x"]) == whole, i
                assert t.last_sequence("rte_relay0000000000000000000001") == (12 if whole else -1)
        finally:
            compat._quiet = False
    finally:
        _rmtree(d)


def test_garbage_files_never_raise():
    d = _tmpdir()
    try:
        compat._quiet = True
        try:
            for junk in (b"", b"\n", b"[]\n00000000\n", b"{}\n%08x\n" % 0, b"\x00" * 9000,
                         b'{"gen": 1}\n' + ("%08x" % (binascii.crc32(b'{"gen": 1}') & 0xFFFFFFFF)).encode()):
                _write(d + "/state.dat", junk)
                _write(d + "/state.tmp", junk)
                s = Store(d)
                s.load()
                assert s.last_sequence("r") == -1
            os.remove(d + "/state.dat")
            os.remove(d + "/state.tmp")
            os.mkdir(d + "/state.dat")  # unreadable path
            s = Store(d)
            s.load()
            assert s.last_sequence("r") == -1
        finally:
            compat._quiet = False
    finally:
        _rmtree(d)


def test_failed_write_raises_and_keeps_dat():
    d = _tmpdir()
    try:
        s = Store(d, block=10)
        s.load()
        s.set_sequence("r", 1)
        for _ in range(10):
            s.next_message_id()  # block 0-9 used up
        good = _read(d + "/state.dat")
        os.mkdir(d + "/state.tmp")  # opening the .tmp for writing now fails
        try:
            s.next_message_id()
            assert False, "no OSError"
        except OSError:
            pass
        try:
            s.set_sequence("r", 2)
            assert False, "no OSError"
        except OSError:
            pass
        assert _read(d + "/state.dat") == good
        assert s.last_sequence("r") == 2  # kept in RAM, written by the next good write
        os.rmdir(d + "/state.tmp")
        mid = s.next_message_id()
        assert _split(mid)[1] == 10
        s2 = Store(d, block=10)
        s2.load()
        assert s2.last_sequence("r") == 2
        assert _split(s2.next_message_id())[1] == 20
    finally:
        _rmtree(d)
