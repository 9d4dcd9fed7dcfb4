"""Loop-lag floor (MicroPython): the same 1 ms ticker alone in an asyncio loop, no firmware.

Prints `bench: {"idle": {...lag stats}}` after `seconds` (from idle.json, default 5).
"""
import asyncio
import json

from bench_lag import lag, ticker

try:
    with open("idle.json") as f:
        _S = json.load(f).get("seconds", 5)
except OSError:
    _S = 5


async def _main():
    t = asyncio.create_task(ticker())
    await asyncio.sleep(_S)
    t.cancel()
    print("bench: " + json.dumps({"idle": lag[0].stats()}))


asyncio.run(_main())
