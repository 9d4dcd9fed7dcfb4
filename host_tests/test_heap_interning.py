"""The message hot path must not intern strings on MicroPython.

On MicroPython, `s[i]` and `for c in s` on a str return each character as an interned
qstr. Interned strings are never freed, and when a qstr pool fills the next one is
allocated at twice the size: one more character after hundreds of messages cost the
gateway a permanent 7 KB in one step (found by the small-heap run: a 64 KB heap ran out
of memory a minute in). This runs the per-message functions on the unix port with fresh
values (every digit, both signs, letters) and compares the qstr count before and after.
"""
import re

import mp

SCRIPT = r"""
import micropython, json
from firmware.cloud import realer
from firmware.compat import utc_iso
from firmware.net import mqtt
from firmware.outbox import Outbox

def desired(i):
    # varied digits in every field, fractions of several lengths, offsets of both signs
    frac = ("." + str(i * 7919)[: 1 + i % 9]) if i % 4 else ""
    zone = ("Z", "z", "+0%d:%d5" % (i % 10, i % 6), "-1%d:3%d" % (i % 4, i % 10))[i % 4]
    stamp = "20%02d-%02d-%02dt%02d:%02d:%02d%s%s" % (
        20 + i % 80, 1 + i % 12, 1 + i % 28, i % 24, (i * 7) % 60, (i * 13) % 60, frac, zone)
    return json.dumps({"version": 1, "desired_id": "dsr_%x%d" % (i * 2654435761, i),
                       "sequence_number": i, "value": i % 2 == 0, "valid_for_seconds": 1 + i,
                       "expires_at": stamp})

def ack(i):
    return json.dumps({"message_id": "e%x-%d" % (i * 40503, i), "status": "accepted",
                       "retryable": False, "sequence_number": i})

def round_(i, box):
    d = realer.parse_desired(desired(i))
    mid = "e%x-%d" % (i * 40503, i)
    box.add(mid, "rte_x", realer.feed_payload(mid, i * 1.5, utc_iso(), d["desired_id"], "applied"), True)
    for e in box.ready():
        box.sent(e)
    realer.parse_ack(ack(i))
    box.ack(mid, "accepted", False)
    mqtt.encode_publish("realer/iot/v1/devices/x/feed", b"x" * (i % 50), 1, 1 + i)

box = Outbox(8)
round_(0, box)  # first calls may intern the names they use: that is once, not per message
micropython.qstr_info()
for i in range(1, 400):
    round_(i, box)
micropython.qstr_info()
"""


def test_the_message_path_interns_no_strings():
    r = mp.run(["-c", SCRIPT])
    assert r.returncode == 0, r.stdout + r.stderr
    counts = [int(n) for n in re.findall(r"n_qstr=(\d+)", r.stdout)]
    assert len(counts) == 2, r.stdout
    assert counts[1] == counts[0], "interned %d strings while handling 399 messages" % (
        counts[1] - counts[0])
