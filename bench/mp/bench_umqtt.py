"""Stock umqtt.simple baseline (MicroPython): QoS 1 publishes in sequence, as a user of the
stock client would write them (publish() blocks until PUBACK), over verified TLS.

Reads umqtt.json in the working folder; prints `bench: {json}` with the count and time.
"""
import json
import time

from umqtt.simple import MQTTClient  # fetched by bench/umqtt.py; never part of the firmware

with open("umqtt.json") as f:
    o = json.load(f)
with open(o["ca"], "rb") as f:
    ca = f.read()
c = MQTTClient(o["client_id"], o["host"], o["port"], o["username"], o["password"], keepalive=60,
               ssl=True, ssl_params={"ca": ca, "server_hostname": o["host"], "nodelay": o["nodelay"]})
c.connect()
topic, prefix, n = o["topic"], o["prefix"], o["n"]
t0 = time.ticks_us()
for i in range(n):
    c.publish(topic, '{"message_id": "%s-%d", "value": %d, "value_received_at": "2026-11-21T21:00:00.000Z"}'
              % (prefix, i, 10 + i % 20), qos=1)
dt = time.ticks_diff(time.ticks_us(), t0)
print('bench: {"raw_n": %d, "raw_us": %d}' % (n, dt))
c.disconnect()
