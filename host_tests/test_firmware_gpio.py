"""GPIO routes end to end on the unix port's virtual board (file-backed pins).

A debounced digital input and an active-low relay with restore "last",
configured like a real board; the test drives virtual/gpio4 and reads
virtual/gpio5 (and its write log).
"""
import os
import time

import pytest

from firmware_harness import Firmware


def _gpio(c):
    routes = c["routes"]
    door = next(rid for rid, r in routes.items() if r["name"] == "door")
    relay = next(rid for rid, r in routes.items() if r["name"] == "relay")
    routes[door] = {"name": "door", "driver": "digital_in", "pin": 4, "debounce_ms": 20}
    routes[relay] = {"name": "relay", "driver": "relay", "pin": 5, "active": "low",
                     "restore": "last", "safe": False}


@pytest.fixture
def board(cloud, tmp_path):
    f = Firmware(cloud, tmp_path / "flash")
    f.edit_config(_gpio)
    yield f
    f.stop()


def _pin(f, name):
    with open(os.path.join(f.flash, "virtual", name)) as fh:
        return fh.read().strip()


def _set_pin(f, n, level):
    path = os.path.join(f.flash, "virtual", "gpio%d" % n)
    with open(path + ".tmp", "w") as fh:
        fh.write(level)
    os.replace(path + ".tmp", path)


def test_input_change_is_reported_and_a_command_drives_the_relay(cloud, board):
    f = board
    os.makedirs(os.path.join(f.flash, "virtual"), exist_ok=True)
    _set_pin(f, 4, "0")
    f.start()
    f.wait_log(r"mqtt: connected")
    assert _pin(f, "gpio5") == "1"  # active low: off is a high pin
    _set_pin(f, 4, "1")
    f.wait_log(r'publish: door .*"value": true')
    f.wait_log(r"ack: door accepted")
    msg = cloud.desired("relay", True, valid_for=30)
    f.wait_log(r"desired: relay seq=%d value=True -> applied" % msg["sequence_number"])
    assert _pin(f, "gpio5") == "0"  # on: the active-low pin is pulled low
    f.wait_answer(msg["desired_id"])
    assert cloud.ledger("SELECT ack_status FROM desired WHERE desired_id=?",
                        (msg["desired_id"],)) == [("applied",)]


def test_reboot_with_restore_last_never_shows_the_wrong_level(cloud, board):
    f = board
    f.start()
    f.wait_log(r"mqtt: connected")
    msg = cloud.desired("relay", True, valid_for=30)
    f.wait_log(r"seq=%d value=True -> applied" % msg["sequence_number"])
    f.wait_answer(msg["desired_id"])
    time.sleep(6)  # the level is saved write-behind, within 5 s
    f.stop(sig=9)  # a power cut: no clean shutdown
    log = os.path.join(f.flash, "virtual", "gpio5.log")
    os.remove(log)
    f.start()
    f.wait_log(r"mqtt: connected")
    with open(log) as fh:
        levels = fh.read().split()
    # The pin was created at the restored level and never showed "off" (a high pin).
    assert levels and set(levels) == {"0"}, levels
    assert _pin(f, "gpio5") == "0"
