"""Fault suite, end to end: a hostile cloud against the firmware on the unix port, over TLS.

1. Hostile desired-state payloads, published raw on the relay's desired topic
   while one firmware run holds the relay at a known level. Every case: the
   process lives, nothing raises out of the MQTT callback, the relay moves only
   for a valid command, and a parseable message with a desired_id whose value
   or window is bad is answered (`rejected`/`stale`, with the current value).
2. Hostile HTTPS answers on each bootstrap call (token, catalog, credentials):
   a clear log line, no crash, a back-off (Retry-After honoured), relays at
   their safe level, and "mqtt: connected" once the fault is over.

A desired_id the firmware has already answered, reused with a higher sequence
(gateway._on_desired), is refused and not answered: the cloud refuses a second
answer to a desired_id (desired_already_answered), so applying it would move the
relay with no record the cloud accepts. The relay stays, the sequence moves on, and
the cloud's ledger keeps the one answer it has.
"""
import datetime
import json
import re
import signal
import time

import pytest

import fault_report
from firmware_harness import Firmware

pytestmark = pytest.mark.fault

MAX_PACKET = 4096  # gateway.py: MQTTClient(..., max_packet=4096)
MAX_PAYLOAD = 2048  # the emulator's catalog: limits.max_payload_bytes
MAX_BODY = 16384  # realer_boot._MAX_BODY
STALL_S = 15  # realer_boot._TIMEOUT_MS


# --- helpers ------------------------------------------------------------------

def _iso(ts):
    d = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (d.microsecond // 1000)


def _wait(f, start, pattern, timeout=10):
    """(index, line) of the first line from `start` on that matches `pattern`."""
    return f.find(start, pattern, timeout)


def _t(line):
    """Seconds since boot at the start of a firmware log line."""
    return float(line.split()[0])


def _sound(f):
    """The process lives and nothing blew up inside it."""
    assert f.proc.poll() is None, f.log(80)
    bad = [x for x in f.lines if "Traceback" in x or "MemoryError" in x or "on_message" in x
           or "RuntimeError" in x]
    assert not bad, "\n".join(bad)


def _answers(cloud, did, timeout=10):
    """The firmware's answers to `did` as the cloud received them: [(payload dict, status, error)]."""
    deadline = time.monotonic() + timeout
    while True:
        rows = cloud.ledger("SELECT payload, status, error_type FROM received WHERE desired_id=?"
                            " ORDER BY id", (did,))
        if rows or time.monotonic() > deadline:
            return [(json.loads(p), s, e) for p, s, e in rows]
        time.sleep(0.1)


def _msg(seq, value=True, did=None, valid_for=30, **over):
    """A desired message (dict) with `over` applied; a value of DROP removes the field."""
    d = {"version": 1, "desired_id": did or "dsr_h%025d" % seq, "value": value,
         "sequence_number": seq, "valid_for_seconds": valid_for,
         "expires_at": _iso(time.time() + valid_for)}
    d.update(over)
    return {k: v for k, v in d.items() if v is not DROP}


DROP = object()


def _j(d):
    return json.dumps(d, separators=(",", ":"))


# --- 1. hostile desired-state payloads ------------------------------------------

@pytest.mark.parametrize("heap", [None, "64wK"])
def test_hostile_desired_payloads(cloud, tmp_path, heap):
    """`heap`: None is the unix port's default; 64wK is the ESP32's 64 KB (as .mpy, as in
    test_firmware_e2e), where a deeply nested value once ran json.loads out of memory."""
    t_start = time.monotonic()
    kw = {}
    if heap:
        from tools.build import build
        kw = {"heap": heap, "mpy_dir": str(tmp_path / "mpy")}
        build(kw["mpy_dir"], quiet=True)
    # Retained and already late when the firmware connects: valid_for 1 s, delivered 3 s on
    # (the Date bound alone may lag the server by a second; see docs/realer-protocol.md).
    late = cloud.desired("relay", True, valid_for=1)
    topic = late["topic"]
    time.sleep(3)
    f = Firmware(cloud, tmp_path / "flash", **kw).start()
    try:
        _wait(f, 0, r"desired: relay seq=%d value=True -> stale \(now False\) desired_id=%s"
              % (late["sequence_number"], late["desired_id"]), timeout=30)
        _wait(f, 0, r"mqtt: connected", timeout=5)
        assert f.output("relay") is False
        # The known level: a valid command through the admin path.
        known = cloud.desired("relay", True, valid_for=60)
        _wait(f, 0, r"desired: relay seq=%d value=True -> applied \(now True\)" % known["sequence_number"])
        assert f.output("relay") is True
        state = {"seq": known["sequence_number"], "level": True, "cases": 0}
        answered = []  # (desired_id, expected report_status, expected value)

        def nxt():
            state["seq"] += 1
            return state["seq"]

        def publish(payload):
            if isinstance(payload, dict):
                payload = _j(payload)
            cloud.admin("POST", "/admin/desired", {"route": "relay", "raw": payload, "retain": False})

        def case(name, payload, expect, timeout=10):
            """Publish, wait for the firmware's line for it, check relay and process."""
            state["cases"] += 1
            start = len(f.lines)
            publish(payload)
            try:
                _, line = _wait(f, start, expect, timeout)
            except AssertionError as e:
                raise AssertionError("case %r: %s" % (name, e)) from None
            _sound(f)
            assert f.output("relay") is state["level"], (name, line)
            return line

        def refused(name, payload, why=r"[^)]*"):
            return case(name, payload, r"desired: relay: refused message \(%s\); relay unchanged" % why)

        def ignored(name, seq):
            return case(name, _msg(seq, value=not state["level"]),
                        r"desired: relay: sequence %d <= last handled %d, ignored" % (seq, state["seq"]))

        def answer(name, payload, status, seq=None):
            """`seq` (and our desired_id for it) when `payload` is a string."""
            seq = payload["sequence_number"] if seq is None else seq
            did = payload["desired_id"] if isinstance(payload, dict) else "dsr_h%025d" % seq
            line = case(name, payload, r"desired: relay seq=%d value=.* -> %s \(now %s\) desired_id=%s"
                        % (seq, status, state["level"], re.escape(did)))
            state["seq"] = seq
            answered.append((did, status, state["level"]))
            return line

        def applied(name, payload, level):
            seq = payload["sequence_number"]
            state["level"] = level
            line = case(name, payload, r"desired: relay seq=%d value=.* -> applied \(now %s\)" % (seq, level))
            state["seq"] = seq
            return line

        good = _j(_msg(state["seq"] + 1))
        # Not a JSON object at all.
        refused("empty", "", "not JSON")
        refused("whitespace", " \r\n\t ", "not JSON")
        refused("truncated JSON", good[:-7], "not JSON")
        refused("truncated to half", good[:len(good) // 2], "not JSON")
        refused("not JSON", "relay=on", "not JSON")
        refused("html", "<html><body>502 Bad Gateway</body></html>", "not JSON")
        refused("trailing garbage", good + "}}x", "not JSON")
        refused("BOM then JSON", "\ufeff" + good, "not JSON")
        refused("JSON array", "[" + good + "]", "not a JSON object")
        refused("JSON string", '"on"', "not a JSON object")
        refused("JSON number", "1", "not a JSON object")
        refused("JSON null", "null", "not a JSON object")
        refused("JSON true", "true", "not a JSON object")
        # Non-finite literals (not JSON; MicroPython's json refuses them).
        refused("NaN value", good.replace('"value":true', '"value":NaN'), "not JSON")
        refused("Infinity sequence", re.sub(r'"sequence_number":\d+', '"sequence_number":Infinity', good),
                "not JSON")
        refused("-Infinity valid_for", good.replace('"valid_for_seconds":30', '"valid_for_seconds":-Infinity'),
                "not JSON")
        # A required field missing.
        s = state["seq"] + 1
        refused("no version", _msg(s, version=DROP), "unsupported version None")
        refused("no desired_id", _msg(s, desired_id=DROP), "bad desired_id")
        refused("no value", _msg(s, value=DROP), "no value")
        refused("no sequence_number", _msg(s, sequence_number=DROP), "bad sequence_number")
        refused("no valid_for_seconds", _msg(s, valid_for_seconds=DROP), "bad valid_for_seconds")
        # Wrong types and out-of-range numbers.
        refused("version string", _msg(s, version="1"), "unsupported version '1'")
        refused("version bool", _msg(s, version=True), "unsupported version True")
        refused("version float", _msg(s, version=1.0), "unsupported version 1.0")
        refused("version 2", _msg(s, version=2), "unsupported version 2")
        refused("desired_id number", _msg(s, desired_id=12345), "bad desired_id")
        refused("desired_id empty", _msg(s, desired_id=""), "bad desired_id")
        refused("desired_id 65 chars", _msg(s, desired_id="d" * 65), "bad desired_id")
        refused("desired_id object", _msg(s, desired_id={"id": "x"}), "bad desired_id")
        refused("sequence string", _msg(s, sequence_number=str(s)), "bad sequence_number")
        refused("sequence float", _msg(s, sequence_number=float(s)), "bad sequence_number")
        refused("sequence bool", _msg(s, sequence_number=True), "bad sequence_number")
        refused("sequence null", _msg(s, sequence_number=None), "bad sequence_number")
        refused("sequence negative", _msg(s, sequence_number=-s), "bad sequence_number")
        refused("sequence 2**63", _msg(s, sequence_number=2 ** 63), "bad sequence_number")
        refused("sequence 10**400", re.sub(r'"sequence_number":\d+', '"sequence_number":1' + "0" * 400, good),
                "bad sequence_number")
        refused("valid_for string", _msg(s, valid_for_seconds="30"), "bad valid_for_seconds")
        refused("valid_for float", _msg(s, valid_for_seconds=30.5), "bad valid_for_seconds")
        refused("valid_for 1e308", _msg(s, valid_for_seconds=1e308), "bad valid_for_seconds")
        refused("valid_for 0", _msg(s, valid_for_seconds=0), "bad valid_for_seconds")
        refused("valid_for negative", _msg(s, valid_for_seconds=-30), "bad valid_for_seconds")
        refused("valid_for 86401", _msg(s, valid_for_seconds=86401), "bad valid_for_seconds")
        refused("valid_for 2**64", _msg(s, valid_for_seconds=2 ** 64), "bad valid_for_seconds")
        assert state["seq"] == known["sequence_number"]  # nothing so far moved the sequence

        # Parseable, with a desired_id, but a value the relay cannot take: rejected, relay untouched.
        answer("value 'on'", _msg(nxt(), value="on"), "rejected")
        answer("value 2", _msg(nxt(), value=2), "rejected")
        answer("value -1", _msg(nxt(), value=-1), "rejected")
        answer("value 0.5", _msg(nxt(), value=0.5), "rejected")
        answer("value 1.0", _msg(nxt(), value=1.0), "rejected")
        answer("value null", _msg(nxt(), value=None), "rejected")
        answer("value 'true'", _msg(nxt(), value="true"), "rejected")
        answer("value object", _msg(nxt(), value={"on": True}), "rejected")
        answer("value [true]", _msg(nxt(), value=[True]), "rejected")
        seq = nxt()
        answer("value 1e999 (inf)", _j(_msg(seq, value="@")).replace('"@"', "1e999"), "rejected", seq)
        # Deeply nested (a 2 KB payload holds ~1000 levels): refused before parsing, since
        # parsing takes ~75 bytes of heap per level and printing the value recurses.
        s = state["seq"] + 1
        for depth in (20, 200, 900):
            nested = _j(_msg(s, value=0)).replace('"value":0', '"value":' + "[" * depth + "]" * depth)
            assert len(nested) <= MAX_PAYLOAD
            refused("value %d nested arrays" % depth, nested, "nested too deep.*")
        refused("version 300 nested objects", _j(_msg(s)).replace(
            '"version":1', '"version":' + '{"a":' * 300 + "1" + "}" * 300), "nested too deep.*")
        refused("unknown field 900 nested arrays", _j(_msg(s))[:-1] + ',"x":' + "[" * 900 + "]" * 900 + "}",
                "nested too deep.*")
        seq = nxt()
        answer("duplicate keys, last value wins", _j(_msg(seq, value=True))[:-1] + ',"value":"on"}',
               "rejected", seq)

        # Windows: expires_at in the past by the server's clock, or valid_for 1 s delivered late.
        answer("expires_at a minute ago", _msg(nxt(), value=not state["level"], expires_at=_iso(time.time() - 60)),
               "stale")
        answer("valid_for 1 s, published 2 s ago", _msg(nxt(), value=not state["level"], valid_for=1,
                                                      expires_at=_iso(time.time() - 1)), "stale")
        answer("expires_at in 1970", _msg(nxt(), value=not state["level"], expires_at="1970-01-01T00:00:00Z"),
               "stale")
        # Near the edge: the Date header alone knows the server's time to a second, but each
        # desired message's publish time (expires_at - valid_for_seconds) raises the bound to
        # the millisecond, so 0.3 s past is stale, and 0.7 s before is applied (below).
        answer("valid_for 1 s, expired 0.3 s ago", _msg(nxt(), value=not state["level"], valid_for=1,
                                                      expires_at=_iso(time.time() - 0.3)), "stale")

        # Sequence numbers: equal, lower, wrapped to 0 (all ignored, nothing answered).
        ignored("equal sequence", state["seq"])
        ignored("lower sequence", state["seq"] - 3)
        ignored("wrapped sequence 0", 0)
        ignored("sequence 1", 1)

        # Valid commands with hostile extras: applied.
        applied("0 means off", _msg(nxt(), value=0), False)
        applied("1 means on, unknown fields", _msg(nxt(), value=1, extra={"a": [1, 2, {"b": None}]},
                                                  note="\u00e9\u4e2d\u0000"), True)
        applied("expires_at unreadable (monotonic window decides)",
                _msg(nxt(), value=False, expires_at="not a date"), False)
        applied("no expires_at", _msg(nxt(), value=True, expires_at=DROP), True)
        applied("valid_for 1 s, published 0.3 s ago", _msg(nxt(), value=False, valid_for=1,
                                                          expires_at=_iso(time.time() + 0.7)), False)
        # The catalog's max_payload_bytes holds for incoming messages too: exactly that
        # many bytes are applied, one more is refused unparsed (the relay stays).
        seq = nxt()
        base = _msg(seq, value=False, pad="")
        base["pad"] = "x" * (MAX_PAYLOAD - len(_j(base)))
        assert len(_j(base)) == MAX_PAYLOAD
        applied("payload of exactly max_payload_bytes", base, False)
        over = _msg(state["seq"] + 1, value=True, pad="")
        over["pad"] = "x" * (MAX_PAYLOAD + 1 - len(_j(over)))
        refused("payload one byte over max_payload_bytes", over,
                "%d bytes > max_payload_bytes %d" % (MAX_PAYLOAD + 1, MAX_PAYLOAD))
        over["pad"] = "x" * (MAX_PACKET - (2 + len(topic.encode()) + 2) - len(_j(over)) + len(over["pad"]))
        assert 2 + len(topic.encode()) + 2 + len(_j(over)) == MAX_PACKET
        refused("packet of exactly max_packet bytes", over, r"\d+ bytes > max_payload_bytes %d" % MAX_PAYLOAD)

        # A desired_id reused (the last one answered; the firmware remembers 16): see the
        # module docstring.
        def reused(name, payload):
            line = case(name, payload, r"desired: relay: desired_id %s already answered; seq=%d refused, "
                        r"relay unchanged" % (re.escape(payload["desired_id"]), payload["sequence_number"]))
            state["seq"] = payload["sequence_number"]
            return line
        reuse = _msg(nxt(), value=not state["level"], did=base["desired_id"], valid_for=60)
        reused("answered desired_id reused, higher sequence, other value", reuse)
        ignored_replay = case("exact replay of that message", reuse,
                              r"desired: relay: sequence %d <= last handled %d, ignored"
                              % (reuse["sequence_number"], state["seq"]))
        assert ignored_replay
        reused("answered desired_id reused, same value", _msg(nxt(), value=state["level"], did=base["desired_id"]))
        reused("answered desired_id reused, window 1 s",
               _msg(nxt(), value=not state["level"], did=base["desired_id"], valid_for=1))

        # Over max_packet: the link is closed before the body is read, then the firmware reconnects.
        for name, size in (("one byte over max_packet", MAX_PACKET + 1), ("8000 bytes (the admin API takes at most 8 KB)", 8000)):
            seq = nxt()
            big = _msg(seq, value=not state["level"], pad="")
            big["pad"] = "x" * (size - (2 + len(topic.encode()) + 2) - len(_j(big)))
            assert 2 + len(topic.encode()) + 2 + len(_j(big)) == size
            i = len(f.lines)
            state["seq"] -= 1  # never handled
            case(name, big, r"mqtt: down: packet too large")
            _wait(f, i, r"supervisor: .*retrying in", timeout=5)
            _wait(f, i, r"mqtt: connected", timeout=20)
            _sound(f)
            assert f.output("relay") is state["level"]
            assert not any("seq=%d " % seq in x for x in f.lines[i:]), name
        assert len([x for x in f.lines if "<= last handled" in x and
                    "sequence %d " % known["sequence_number"] in x]) >= 2

        # The firmware is still fully working: a last valid command goes through the admin path.
        last = cloud.desired("relay", not state["level"], valid_for=30, sequence_number=nxt())
        state["level"] = not state["level"]
        _wait(f, 0, r"desired: relay seq=%d value=.* -> applied" % last["sequence_number"])
        assert f.output("relay") is state["level"]

        # The ledger holds each answer the firmware owed, with the current value.
        for did, status, value in answered:
            got = _answers(cloud, did)
            assert got, (did, status)
            assert any(p.get("report_status") == status and p["value"] is value for p, _, _ in got), (did, got)
            assert len(got) == 1, (did, got)  # each answered once, the reused id too
        assert cloud.ledger("SELECT ack_status, ack_value FROM desired WHERE desired_id=?",
                            (late["desired_id"],)) == [("stale", "false")]
        # The reused id: answered once, never again (the cloud did not publish it: unknown to it).
        assert [(s, e) for _, s, e in _answers(cloud, base["desired_id"])] == [("rejected", "unknown_desired_id")]
        _wait(f, 0, r"ack: relay accepted message_id=\S+ -> delivered")
        _sound(f)
        assert state["cases"] >= 30, state["cases"]
        print("hostile desired cases (heap %s): %d in %.1f s" % (heap, state["cases"], time.monotonic() - t_start))
        fault_report.record("hostile desired payloads (heap %s)" % (heap or "default"), faults=state["cases"],
                            crashes=0, applied_twice=0, answered=len(answered),
                            notes="relay moved only for valid commands; every owed answer in the ledger once")
    finally:
        f.stop()


# --- 2. hostile HTTPS answers on the bootstrap calls ------------------------------

_STAGE = {"token": ("token", r"bootstrap: token ok"),
          "catalog": ("catalog", r"bootstrap: catalog ok"),
          "credentials": ("credential", r"bootstrap: credential realer-")}


def _fault_line(endpoint, kind):
    stage = _STAGE[endpoint][0]
    if isinstance(kind, int):
        return r"bootstrap: %s: HTTP %d \S+" % (stage, kind)
    if kind == "stall":
        return r"link: OSError: .*timeout \(HTTPS https://"
    if kind == "huge":
        return r"link: HTTPError: content-length \d+ over %d bytes \(HTTPS https://" % MAX_BODY
    if kind == "garbage":
        # 200 with bytes that are not JSON; the credential call wants 201, so its line says 200.
        return (r"bootstrap: credential: HTTP 200 \(expected 201; the answer names no error\)"
                if endpoint == "credentials"
                else r"bootstrap: %s: HTTP 200 answer is not JSON" % stage)
    raise ValueError(kind)


_KNOBS = {401: {"status": 401}, 403: {"status": 403}, 429: {"status": 429, "retry_after": 3},
          500: {"status": 500}, 503: {"status": 503}, "stall": {"stall": True},
          "garbage": {"garbage": True}, "huge": {"huge": MAX_BODY + 4000}}


def _run_fault(cloud, flash, endpoint, kind):
    """One boot against one fault (times=1); returns the firmware (stopped)."""
    cloud.clear_faults()
    cloud.fault(endpoint, times=1, **_KNOBS[kind])
    f = Firmware(cloud, flash).start()
    try:
        timeout = STALL_S + 15 if kind == "stall" else 20
        i, bad = _wait(f, 0, _fault_line(endpoint, kind), timeout)
        assert f.output("relay") is False  # the safe level while the cloud misbehaves
        # Before the fault, the stages ahead of it succeeded; none after it did.
        order = ["token", "catalog", "credentials"]
        for ep in order[:order.index(endpoint)]:
            assert any(re.search(_STAGE[ep][1], x) for x in f.lines[:i]), (endpoint, kind, f.log())
        # The backoff that counts the failure is the failing stage's, timeouts included.
        j, retry = _wait(f, i, r"supervisor: %s: retrying in (\d+\.\d) s" % _STAGE[endpoint][0], 5)
        delay = float(re.search(r"retrying in (\d+\.\d) s", retry).group(1))
        k, ok = _wait(f, j, _STAGE[endpoint][1], 20)
        assert f.output("relay") is False
        _wait(f, k, r"mqtt: connected", 20)
        if kind == 429:
            # Retry-After: 3 holds the next attempt back at least 3 s.
            assert delay >= 3.0, retry
            assert _t(ok) - _t(bad) >= 3.0, (bad, ok)
        _sound(f)
        assert cloud.ledger("SELECT 1")  # the cloud is still there too
        return f, _t(ok) - _t(bad)
    finally:
        f.stop(signal.SIGINT, timeout=10)


@pytest.mark.parametrize("endpoint", ["token", "catalog", "credentials"])
def test_hostile_https_answers_on_bootstrap(cloud, tmp_path, endpoint):
    # No retained command to flip the relay once connected.
    cloud.admin("POST", "/admin/desired", {"route": "relay", "raw": "", "retain": True})
    gaps = {}
    for n, kind in enumerate((401, 403, 429, 500, 503, "garbage", "huge", "stall")):
        f, gap = _run_fault(cloud, tmp_path / ("flash%d" % n), endpoint, kind)
        gaps[kind] = gap
        if isinstance(kind, int) and kind in (401, 403) and endpoint != "token":
            # An auth failure starts over from a fresh token.
            i = next(i for i, x in enumerate(f.lines) if re.search(_fault_line(endpoint, kind), x))
            assert any("bootstrap: token ok" in x for x in f.lines[i:]), f.log()
        if kind == "stall":
            assert gap >= 0  # the 15 s deadline ended it; the retry succeeded
            t = [_t(x) for x in f.lines if re.search(_fault_line(endpoint, kind), x)]
            assert t and t[0] >= STALL_S - 1, f.log()
    print("%s: gaps between the failed and the next good answer: %s" % (endpoint, gaps))
    fault_report.record("hostile HTTPS answers on %s" % endpoint, faults=len(gaps), crashes=0,
                        recover_s=max(gaps.values()),
                        notes="401 403 429 500 503 garbage huge stall; relay safe until connected")


def test_persistent_fault_backs_off_until_cleared(cloud, tmp_path):
    """A 503 until cleared: retries keep coming with growing bounds, then it recovers."""
    cloud.admin("POST", "/admin/desired", {"route": "relay", "raw": "", "retain": True})
    cloud.fault("token", status=503)
    f = Firmware(cloud, tmp_path / "flash").start()
    try:
        i, _ = _wait(f, 0, r"bootstrap: token: HTTP 503 server_error", 20)
        i, _ = _wait(f, i + 1, r"bootstrap: token: HTTP 503 server_error", 10)
        i, _ = _wait(f, i + 1, r"bootstrap: token: HTTP 503 server_error", 10)
        assert f.output("relay") is False
        assert not any("mqtt: connected" in x for x in f.lines)
        cloud.clear_faults()
        _wait(f, i, r"bootstrap: token ok", 20)
        _wait(f, i, r"mqtt: connected", 20)
        _sound(f)
    finally:
        f.stop()
