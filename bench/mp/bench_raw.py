"""Raw MQTT baseline (MicroPython): QoS 1 publishes in sequence with the firmware's own
MQTT client over the firmware's verified TLS, publish then wait_puback, no outbox, no log.

Reads raw.json in the working folder; prints `bench: {json}` with the count and time.
"""
import asyncio
import json
import time

from firmware.net import mqtt, tls


async def _go(o):
    with open(o["ca"], "rb") as f:
        ctx = tls.context(f.read())
    r, w = await tls.open_tls(o["host"], o["port"], ctx)
    c = mqtt.MQTTClient(lambda t, p: None, keepalive=60)
    await c.connect(r, w, o["client_id"], o["username"], o["password"])
    topic, prefix, n = o["topic"], o["prefix"], o["n"]
    done = 0
    t0 = time.ticks_us()
    for i in range(n):
        payload = '{"message_id": "%s-%d", "value": %d, "value_received_at": "2026-11-21T21:00:00.000Z"}' % (
            prefix, i, 10 + i % 20)
        pid = await c.publish(topic, payload, 1)
        if not await c.wait_puback(pid, 10000):
            break
        done += 1
    dt = time.ticks_diff(time.ticks_us(), t0)
    print('bench: {"raw_n": %d, "raw_us": %d}' % (done, dt))
    await c.disconnect()


with open("raw.json") as f:
    asyncio.run(_go(json.load(f)))
