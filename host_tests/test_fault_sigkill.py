"""SIGKILL storm: the firmware process killed at random points, many times, while a sensor
streams unique values and a few commands arrive. The firmware on the unix port against
its own local cloud over TLS; judged by the store's files after each kill, the reboot
logs, and the cloud's ledger.

What the firmware promises across a power cut (and what this test asserts):

- the store's state file always parses, and a reboot never reports it corrupt or missing;
  the message_id epoch never changes, and each boot counts on from above every id a
  previous boot handed out: a message_id is never reused, for any payload;
- an acknowledged event is never sent again under a new message_id (every unique sensor
  value is in the ledger under one message_id only), and no command is applied twice;
- every event that was in the outbox's spill file (outbox.dat) at the instant of a kill
  reaches the ledger after the reboots, with its message_id.

What it does *not* promise, by design (measured here, not asserted): the outbox spills
to flash only while offline or while an ack is overdue (and then at most every 5 s,
write-behind). An event created while online and not yet acknowledged when the power
goes, or created offline less than 5 s before the next spill, is lost. The test reports
that count (`lost_unspilled`) and the window it falls in: the time from publish to ack
(`ack_ms_*`, from the firmware's own log), which bounds the online exposure.

About 30 % of the boots are offline (the cloud answers 503 to every token request), so the
spill path is cut too; there the loss window is the time since the last spill
(`spill_age_at_kill_ms_max`) and the count is `lost_values_offline`: streamed values (each
held 300 ms, longer than the 250 ms sampler period) that no ledger row has. Online boots
give `lost_values_online` the same way.

The seed of the kill delays is printed; set UGATE_SIGKILL_SEED to replay a run.
"""
import json
import os
import random
import re
import signal
import statistics
import threading
import time

import pytest

import fault_report
from firmware.outbox import Outbox
from firmware.store import _decode

pytestmark = pytest.mark.fault

KILLS = int(os.environ.get("UGATE_SIGKILL_KILLS", 24))
_PUB = re.compile(r'^\s*(\d+)\.(\d+) publish: (\S+) (\{.*?\})( \(again, try \d+\))?$')
_ACK = re.compile(r'^\s*(\d+)\.(\d+) ack: (\S+) (\w+) message_id=(\S+)')
_APPLIED = re.compile(r'desired: relay seq=(\d+) value=\S+ -> applied .*desired_id=(\S+)')


class Streamer:
    """Writes a new, never repeated temperature every `period` s: (37 k mod 160) - 35, plus
    k // 160 thousandths. Any two differ by at least 1 (beyond the 0.5 deadband), whichever
    ones the firmware's 250 ms sampler happens to see, so each reading it sees is one event."""

    def __init__(self, f, period=0.3):
        self.f, self.period, self.k = f, period, 0
        self.written = []  # (host monotonic time, value)
        self.running = threading.Event()
        self.quit = False
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def step(self):
        with self.lock:
            self.k += 1
            k = self.k
            v = round((k * 37) % 160 - 35 + (k // 160) * 0.001, 3)
            self.f.set_input("temperature", v)
            self.written.append((time.monotonic(), v))

    def _run(self):
        while not self.quit:
            if self.running.wait(0.2):
                time.sleep(self.period)  # the value written before the boot is held too
                if self.running.is_set():
                    self.step()


def _state(flash):
    with open(os.path.join(flash, "state.dat"), "rb") as fh:
        return _decode(fh.read())


def _spilled(flash):
    """message_ids in outbox.dat, read as the firmware's next boot will read it."""
    path = os.path.join(flash, "outbox.dat")
    if not os.path.exists(path):
        return []
    ob = Outbox(spill_path=path)
    ob.load()
    return [e.mid for e in ob.entries]


def _mid_n(mid):
    return int(mid.rsplit("-", 1)[1])


def test_sigkill_storm_loses_nothing_spilled_and_reuses_no_message_id(own_cloud, fw):
    seed = int(os.environ.get("UGATE_SIGKILL_SEED", random.randrange(1 << 30)))
    print("sigkill storm seed: %d (UGATE_SIGKILL_SEED=%d to replay)" % (seed, seed))
    rng = random.Random(seed)
    t_start = time.monotonic()
    cloud = own_cloud("--quiet")
    f = fw(cloud)
    stream = Streamer(f)
    runs = []  # per run: dict(lines, spilled, killed)
    commands = []
    epoch = None
    crashes = 0
    try:
        for i in range(KILLS + 1):
            offline = i < KILLS and rng.random() < 0.3
            if offline:  # the cloud refuses tokens: this boot stays offline, its events spill
                cloud.fault("token", status=503)
            stream.step()  # the boot reading is a value no earlier run saw
            t_boot = time.monotonic()
            f.start(power_on=i > 0)  # every kill is a power cut: the next boot is a power-on
            stream.running.set()
            run = {"lines": f.lines, "spilled": [], "killed": False, "had_state": True,
                   "offline": offline, "t_boot": t_boot}
            runs.append(run)
            if i == KILLS:
                break
            delay = rng.uniform(2.0, 7.0) if offline else rng.uniform(0.3, 4.0)
            if not offline and rng.random() < 0.3:  # a command, arriving at a random point
                t_cmd = rng.uniform(0.2, delay)
                time.sleep(t_cmd)
                delay -= t_cmd
                commands.append(cloud.desired("relay", len(commands) % 2 == 0, valid_for=30))
            time.sleep(delay)
            if f.proc.poll() is not None:
                crashes += 1  # it died by itself
            f.stop(sig=signal.SIGKILL)
            run["t_kill"] = time.monotonic()
            stream.running.clear()
            run["killed"] = True
            if offline:
                cloud.clear_faults()
            ob = os.path.join(f.flash, "outbox.dat")
            # How old the spill file was at the cut (host clocks: mtime is wall time).
            run["spill_age_ms"] = int((time.time() - os.path.getmtime(ob)) * 1000) \
                if os.path.exists(ob) else None
            # The power is off: the flash as the next boot will find it.
            run["had_state"] = os.path.exists(os.path.join(f.flash, "state.dat"))
            if run["had_state"]:
                st = _state(f.flash)
                assert st is not None, "state.dat does not parse after kill %d" % (i + 1)
                assert epoch in (None, st["epoch"]), "the message_id epoch changed: state was lost"
                epoch = st["epoch"]
            else:  # killed before the first message_id: nothing to keep yet
                assert not any("publish:" in x for r in runs for x in r["lines"])
            run["spilled"] = _spilled(f.flash)
        # The last run is left alone: it drains what the kills left behind.
        f.wait_log(r"mqtt: connected", timeout=30)
        final = cloud.desired("relay", not commands[-1]["value"] if commands else True, valid_for=30)
        commands.append(final)
        f.wait_log(r"desired: relay seq=%d value=\S+ -> applied" % final["sequence_number"], timeout=15)
        assert f.output("relay") is final["value"]
        f.wait_log(r"ack: relay accepted message_id=\S+ -> delivered", timeout=15)
        spilled = set(m for r in runs for m in r["spilled"])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = set(r[0] for r in cloud.ledger("SELECT message_id FROM effects"))
            if spilled <= got:
                break
            time.sleep(0.3)
    finally:
        stream.quit = True
        stream.running.set()
    f.stop()
    elapsed = time.monotonic() - t_start

    # --- each reboot: no word about a bad state, no traceback -----------------------------
    for n, r in enumerate(runs):
        log = "\n".join(r["lines"])
        if "Traceback" in log:
            crashes += 1
        bad = [x for x in r["lines"] if re.search(r"store: .*(corrupt|cannot|no saved state)", x)]
        if n == 0 or not runs[n - 1]["had_state"]:
            bad = [x for x in bad if "no saved state" not in x]  # nothing was saved yet
        assert not bad, "boot %d: %s" % (n + 1, bad)
    assert crashes == 0, "tracebacks or unexpected exits"

    # --- message_ids: never reused, counted on across boots ---------------------------------
    published = {}  # mid -> payload (firmware side)
    pub_runs = []  # per run: [(t_ms, mid, route)]
    for r in runs:
        mine = []
        for x in r["lines"]:
            m = _PUB.match(x)
            if m:
                payload = m.group(4)
                mid = json.loads(payload)["message_id"]
                assert published.setdefault(mid, payload) == payload, "message_id %s reused" % mid
                mine.append((int(m.group(1)) * 1000 + int(m.group(2)), mid, m.group(3), bool(m.group(5))))
        pub_runs.append(mine)
    assert published, "nothing was published"
    assert {m.rsplit("-", 1)[0] for m in published} == {epoch}
    highest = -1
    for n, mine in enumerate(pub_runs):
        fresh = [_mid_n(mid) for _, mid, _, again in mine
                 if not any(mid in p["spilled"] for p in runs[:n])]
        if fresh:
            assert min(fresh) > highest, "boot %d handed out an id at or below %d" % (n + 1, highest)
            highest = max(highest, max(fresh))

    # --- the ledger: one payload per message_id, one message_id per sensor value --------------
    like = epoch + "-%"
    reuse = cloud.ledger("SELECT message_id FROM received WHERE message_id LIKE ? GROUP BY message_id"
                         " HAVING COUNT(DISTINCT payload) > 1", (like,))
    assert reuse == [], reuse
    statuses = dict(cloud.ledger("SELECT status, COUNT(*) FROM received WHERE message_id LIKE ?"
                                 " GROUP BY status", (like,)))
    assert set(statuses) <= {"accepted", "replayed"}, statuses
    effects = cloud.ledger("SELECT message_id, route_id, value, desired_id FROM effects"
                           " WHERE message_id LIKE ?", (like,))
    in_ledger = {m for m, _, _, _ in effects}
    temp_route = f.route_ids["temperature"]
    by_value = {}
    for mid, route, value, _ in effects:
        if route == temp_route:
            by_value.setdefault(round(float(value), 3), set()).add(mid)
    twice = {v: m for v, m in by_value.items() if len(m) > 1}
    assert not twice, "values sent again under a new message_id: %s" % twice

    # --- commands: each answered at most once, none applied twice ------------------------------
    applied = {}
    for r in runs:
        for x in r["lines"]:
            m = _APPLIED.search(x)
            if m:
                applied[m.group(2)] = applied.get(m.group(2), 0) + 1
    applied_twice = sum(1 for c in applied.values() if c > 1)
    answered_twice = cloud.ledger("SELECT COUNT(*) FROM received WHERE error_type="
                                  "'desired_already_answered'")[0][0]
    answers = {d: s for d, s in cloud.ledger("SELECT desired_id, ack_status FROM desired")}
    assert answers[final["desired_id"]] == "applied"
    commands_unanswered = sum(1 for c in commands if answers.get(c["desired_id"]) is None)

    # --- lost: published (or spilled) but never in the ledger ---------------------------------
    spilled = set(m for r in runs for m in r["spilled"])
    lost_spilled = sorted(spilled - in_ledger)
    lost_unspilled = sorted(set(published) - in_ledger - spilled)
    # Created but never published nor spilled: invisible in the log, but message_ids are
    # handed out one after another within a boot, so a gap between the ids a boot is seen to
    # have made (published, or in the spill file at its kill) that the ledger lacks is one.
    # Those made after the last one seen before the cut stay invisible: a lower bound.
    lost_gap = 0
    earlier = set()
    for n, (r, mine) in enumerate(zip(runs, pub_runs)):
        seen = {mid for _, mid, _, _ in mine} | set(r["spilled"])
        fresh = sorted(_mid_n(m) for m in seen - earlier)
        earlier |= seen
        if fresh:
            lost_gap += sum(1 for k in range(fresh[0], fresh[-1] + 1)
                            if "%s-%d" % (epoch, k) not in in_ledger)
    # Every value the streamer wrote lasts 300 ms, longer than the sampler's 250 ms period, so
    # each is seen once (a late loop could skip one: then this over-counts). A value written
    # during a killed boot, at least 0.3 s before the cut, and never in the ledger was lost.
    ledger_values = set(by_value)
    lost_values = {True: 0, False: 0}  # offline?
    for r in runs:
        if r["killed"]:
            lost_values[r["offline"]] += sum(
                1 for t, v in stream.written
                if r["t_boot"] - 0.05 <= t <= r["t_kill"] - 0.3 and v not in ledger_values)
    spill_ages = [r["spill_age_ms"] for r in runs if r["killed"] and r["offline"] and r["spill_age_ms"] is not None]
    killed_online = sum(1 for r in runs if r["killed"] and any("mqtt: connected" in x for x in r["lines"]))
    # The exposure window: publish -> ack on the firmware's own clock, per run.
    ack_ms = []
    for r, mine in zip(runs, pub_runs):
        acks = {}
        for x in r["lines"]:
            m = _ACK.match(x)
            if m and m.group(4) in ("accepted", "replayed"):
                acks.setdefault(m.group(5), int(m.group(1)) * 1000 + int(m.group(2)))
        ack_ms += [acks[mid] - t for t, mid, _, _ in mine if mid in acks]
    ack_ms.sort()
    # Where the unspilled losses fell: the last thing each killed run published before the cut.
    lost_where = []
    for r, mine in zip(runs, pub_runs):
        last = {mid for _, mid, _, _ in mine[-8:]}
        lost_where += [mid in last for mid in lost_unspilled if mid in {x[1] for x in mine}]
    fault_report.record(
        "sigkill storm (%d kills, seed %d)" % (KILLS, seed), faults=KILLS, sent=len(published),
        lost=len(lost_spilled), applied_twice=applied_twice + answered_twice, crashes=crashes,
        lost_unspilled=len(lost_unspilled), lost_unseen_min=lost_gap, killed_online=killed_online,
        killed_offline=sum(1 for r in runs if r["killed"] and r["offline"]),
        lost_values_online=lost_values[False], lost_values_offline=lost_values[True],
        spill_age_at_kill_ms_max=max(spill_ages) if spill_ages else None,
        spilled=len(spilled), commands=len(commands),
        commands_unanswered=commands_unanswered,
        ack_ms_median=statistics.median(ack_ms) if ack_ms else None,
        ack_ms_p95=ack_ms[int(len(ack_ms) * 0.95)] if ack_ms else None,
        ack_ms_max=ack_ms[-1] if ack_ms else None, run_s=round(elapsed, 1),
        notes="lost = spilled but never delivered (promise: 0); lost_unspilled = published online and"
              " not yet acked at the kill (by design: the outbox spills only offline or when an ack is"
              " overdue); lost_unseen_min = created, never published nor spilled (gaps in the ids);"
              " lost_values_* = streamed values seen by no ledger row, by boot kind (offline boots lose"
              " what came after the last 5 s write-behind spill: see spill_age_at_kill_ms_max);"
              " %d of them among the last 8 published before their kill" % sum(lost_where))
    assert lost_spilled == [], "events in the spill file at a kill never reached the ledger: %s" % lost_spilled
    assert applied_twice == 0 and answered_twice == 0
    assert elapsed < 150, elapsed
