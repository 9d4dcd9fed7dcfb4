"""Provision a device's flash root from a running local Realer cloud.

    python -m tools.provision DIR [--state state/realer] [--device-id 12345]

Writes DIR/config.json, DIR/secrets.json (mode 0600), DIR/ca.der and the
virtual board's inputs (DIR/virtual/<name>.in) for the device's routes:
sensor routes get the `virtual_sensor` driver, boolean command routes the
`virtual_relay` driver. The same files go to a real board with
`./deploy.sh deploy` (issue 4).
"""
import argparse
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_STATE = os.path.join(ROOT, "state", "realer")
START_VALUES = {"number": 21.5, "integer": 1, "boolean": False, "string": "ok"}


def provision(folder, state=DEFAULT_STATE, device_id=None, keepalive=30, interval=10, routes=None):
    """Write the flash root; return the config dict."""
    from tools.realer import fleet as _fleet
    with open(os.path.join(state, "run.json")) as f:
        info = json.load(f)
    dev_info = info["devices"][0] if device_id is None else next(
        d for d in info["devices"] if d["device_id"] == device_id)
    fl = _fleet.load(info.get("fleet", _fleet.DEFAULT_FLEET), state)
    device = fl.device_by_id[dev_info["device_id"]]
    os.makedirs(os.path.join(folder, "virtual"), exist_ok=True)
    cfg_routes = {}
    for r in device.routes:
        if routes is not None and r.name not in routes:
            continue
        if r.source_type == "sensor":
            cfg_routes[r.id] = {"name": r.name, "driver": "virtual_sensor", "interval": interval,
                                "deadband": 0.5 if r.value_type == "number" else 0}
            start = START_VALUES[r.value_type]
            if r.min is not None and r.max is not None and not isinstance(start, bool):
                start = max(r.min, min(r.max, start))
            write_input(folder, r.name, start)
        elif r.value_type == "boolean":
            cfg_routes[r.id] = {"name": r.name, "driver": "virtual_relay", "safe": False}
    config = {
        "cloud": {"dialect": "realer", "api_url": info["api_url"], "device_id": device.id,
                  "client_id": dev_info["client_id"], "ca": "ca.der"},
        "mqtt": {"keepalive": keepalive},
        "routes": cfg_routes,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    path = os.path.join(folder, "secrets.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"client_secret": dev_info["client_secret"]}, f)
    shutil.copyfile(info["ca_der"], os.path.join(folder, "ca.der"))
    return config


def write_input(folder, name, value):
    """Set a virtual sensor's reading (virtual/<name>.in), atomically."""
    path = os.path.join(folder, "virtual", name + ".in")
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def read_output(folder, name):
    """A virtual relay's level (virtual/<name>.out), or None before the firmware wrote it."""
    try:
        with open(os.path.join(folder, "virtual", name + ".out")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(argv=None):
    p = argparse.ArgumentParser(prog="provision", description=__doc__.split("\n")[0])
    p.add_argument("folder")
    p.add_argument("--state", default=DEFAULT_STATE)
    p.add_argument("--device-id", type=int)
    a = p.parse_args(argv)
    try:
        cfg = provision(a.folder, a.state, a.device_id)
    except FileNotFoundError:
        sys.exit("provision: no running cloud in %s (start ./deploy.sh cloud)" % a.state)
    print("provisioned %s: device %d, %d routes" % (a.folder, cfg["cloud"]["device_id"], len(cfg["routes"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
