"""Never lose data, never misfire a relay: outbox spill across a reboot, relay leases,
the authentication circuit breaker. The firmware on the unix port against the local cloud."""
import json
import os
import re
import time

import pytest

import fault_report
from realer_harness import free_port

pytestmark = pytest.mark.fault


def test_offline_events_survive_a_power_cut_and_drain_with_their_message_ids(cloud, fw):
    f = fw()
    api = f.config["cloud"]["api_url"]
    f.edit_config(lambda c: c["cloud"].update(api_url="https://localhost:%d" % free_port()))
    f.start()  # no cloud: every event waits in the outbox, which spills to flash
    f.wait_log(r"link: .*HTTPS")
    for v in (11.0, 12.5, 14.0, 15.5):
        f.set_input("temperature", v)
        time.sleep(0.6)  # each beyond the 0.5 deadband: one event each
    time.sleep(6)  # the spill is write-behind, every 5 s
    f.stop(sig=9)  # a power cut
    assert os.path.exists(os.path.join(f.flash, "outbox.dat"))
    with open(os.path.join(f.flash, "outbox.dat"), "rb") as fh:
        spilled = re.findall(rb'"message_id": "([^"]+)"', fh.read())
    assert len(spilled) >= 5, spilled  # 3 start-up readings + the changes
    f.edit_config(lambda c: c["cloud"].update(api_url=api))
    f.start()
    line = f.wait_log(r"outbox: \d+ unacknowledged events from before the restart")
    assert int(line.split("outbox: ")[1].split()[0]) == len(spilled)
    f.wait_log(r"mqtt: connected")
    mids = [m.decode() for m in spilled]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = dict(cloud.ledger("SELECT message_id, COUNT(*) FROM effects WHERE message_id IN (%s)"
                                " GROUP BY message_id" % ",".join("?" * len(mids)), tuple(mids)))
        if len(got) == len(mids):
            break
        time.sleep(0.3)
    assert got == {m: 1 for m in mids}
    # Drained in order: the cloud received them in the order they happened.
    order = [r[0] for r in cloud.ledger("SELECT message_id FROM received WHERE message_id IN (%s)"
                                        " ORDER BY id" % ",".join("?" * len(mids)), tuple(mids))]
    assert list(dict.fromkeys(order)) == mids
    time.sleep(6)  # all acked: the spill file goes at the next write-behind
    assert not os.path.exists(os.path.join(f.flash, "outbox.dat"))
    fault_report.record("offline events through a power cut", faults=1, sent=len(mids), lost=0,
                        applied_twice=0, crashes=0, notes="spilled to flash, drained in order, same message_ids")


def test_a_leased_relay_goes_safe_when_its_command_window_passes(cloud, fw):
    f = fw()
    f.edit_config(lambda c: [r.update(lease=60) for r in c["routes"].values()
                             if r["driver"] == "virtual_relay"])
    f.start()
    f.wait_log(r"mqtt: connected")
    msg = cloud.desired("relay", True, valid_for=3)
    f.wait_log(r"seq=%d value=True -> applied" % msg["sequence_number"])
    assert f.output("relay") is True
    f.wait_log(r"relay: relay: back to its safe level \(the command's window has passed\)", timeout=10)
    assert f.output("relay") is False
    line = f.wait_log(r'publish: relay \{.*"value": false')
    assert "desired_id" not in line  # a local change
    f.wait_log(r"ack: relay accepted")


def test_repeated_authentication_failures_open_the_circuit(cloud, fw):
    cloud.fault("token", status=401)
    f = fw()
    f.start()
    for _ in range(3):
        f.wait_log(r"bootstrap: token: HTTP 401")
    f.wait_log(r"supervisor: circuit open: 3 authentication failures in a row")
    line = f.wait_log(r"supervisor: token: retrying in")
    delay = float(line.split("retrying in ")[1].split()[0])
    assert delay >= 300, line  # minutes between tries, not a tight loop
    assert f.proc.poll() is None
    fault_report.record("token refused (401) every time", faults=3, crashes=0, next_try_s=delay,
                        notes="circuit breaker: 3 failures, then minutes between tries")


def test_after_a_power_cut_the_cloud_learns_the_relays_boot_level(cloud, fw):
    """The relay boots at its safe level (restore "safe", the default); the cloud's last
    command said on and is not applied again (its sequence was handled), so the firmware
    reports the boot level as a local change and the cloud's view matches the pin."""
    f = fw()
    f.start()
    f.wait_log(r"mqtt: connected")
    msg = cloud.desired("relay", True, valid_for=60)
    f.wait_log(r"seq=%d value=True -> applied" % msg["sequence_number"])
    assert f.output("relay") is True
    f.stop(sig=9)  # a power cut
    rid = f.route_ids["relay"]
    before = cloud.ledger("SELECT COALESCE(MAX(sequence_number), 0) FROM effects WHERE route_id=?", (rid,))[0][0]
    f.start()
    f.wait_log(r"desired: relay: sequence %d <= last handled %d, ignored"
               % (msg["sequence_number"], msg["sequence_number"]))
    assert f.output("relay") is False
    deadline = time.monotonic() + 20
    while True:  # the cloud's latest word on the relay, from after the reboot
        rows = cloud.ledger("SELECT value, desired_id FROM effects WHERE route_id=? AND sequence_number>?"
                            " ORDER BY sequence_number DESC LIMIT 1", (rid, before))
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows and json.loads(rows[0][0]) is False and rows[0][1] is None, rows
