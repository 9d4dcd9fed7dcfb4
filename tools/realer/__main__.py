"""The local Realer cloud's command line.

  python -m tools.realer [serve] [--state DIR] [--http-port N] [--mqtt-port N] ...
  python -m tools.realer desired ROUTE VALUE [--valid-for S] [--sequence N]
  python -m tools.realer fault ENDPOINT --status 503 --retry-after 5 [--times N]
  python -m tools.realer fault ack --silent | --resume | --error N
  python -m tools.realer fault clear
  python -m tools.realer broker-restart
  python -m tools.realer status

Every command but ``serve`` talks to the running emulator found through
``run.json`` in its state folder (the same --state).
"""
import argparse
import asyncio
import json
import os
import ssl
import sys
import urllib.error
import urllib.request

from .server import DEFAULT_STATE


def _value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _admin(state, method, path, body=None):
    try:
        with open(os.path.join(state, "run.json")) as f:
            info = json.load(f)
    except FileNotFoundError:
        sys.exit("realer: no running cloud with state folder %s (start it with ./deploy.sh cloud)" % state)
    ctx = ssl.create_default_context(cafile=info["ca"])
    req = urllib.request.Request(
        "https://127.0.0.1:%d%s" % (info["http_port"], path), method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + info["admin_token"], "Content-Type": "application/json"})
    ctx.check_hostname = False  # 127.0.0.1 is in the certificate; the CA check stays on
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=15) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        sys.exit("realer: %s" % (json.loads(e.read() or b"{}").get("error_description") or e))
    except OSError as e:
        sys.exit("realer: the cloud does not answer: %s" % e)


def main(argv=None):
    p = argparse.ArgumentParser(prog="realer", description="The local Realer cloud.")
    p.add_argument("--state", default=os.environ.get("REALER_STATE", DEFAULT_STATE),
                   help="state folder (PKI, broker, ledger); default: state/realer")
    sub = p.add_subparsers(dest="cmd")

    s = sub.add_parser("serve", help="run the cloud in the foreground (default)")
    s.add_argument("--http-port", type=int, default=8443)
    s.add_argument("--mqtt-port", type=int, default=8883)
    s.add_argument("--fleet", help="fleet file (default: the demo fleet)")
    s.add_argument("--credential-ttl", type=int, help="MQTT credential lifetime in seconds")
    s.add_argument("--renew-after", type=int, help="renew_after in seconds")
    s.add_argument("--hard-ttl", type=int, help="session_hard_expires_in in seconds")
    s.add_argument("--token-ttl", type=int, help="OAuth access token lifetime in seconds")
    s.add_argument("--quiet", action="store_true", help="print only the banner")
    s.add_argument("--server-name", action="append",
                   help="issue the server certificate for this name only (hostname-mismatch tests)")
    s.add_argument("--listen", action="append", default=[], metavar="ADDR",
                   help="also listen on ADDR (API and broker), besides 127.0.0.1; e.g. a veth address"
                   " for a device in another network namespace")
    s.add_argument("--public-host", default="localhost", metavar="HOST",
                   help="the host in the api_url and broker_url handed out (default localhost);"
                   " added to the server certificate's names")
    s.add_argument("--broker-url", help="advertise this broker_url in the catalog (e.g. mqtt://... for"
                   " plain-TCP refusal tests); the broker itself stays TLS-only")

    d = sub.add_parser("desired", help="set a command route's desired value")
    d.add_argument("route", help="route id, or route name on --device")
    d.add_argument("--device", type=int, help="device id for a route name (default: the fleet's first)")
    d.add_argument("value", help="JSON value: true, 0, 42.5, \"text\"")
    d.add_argument("--valid-for", type=int, default=60, help="valid_for_seconds (default 60)")
    d.add_argument("--sequence", type=int, help="force the sequence_number (tests of stale commands)")
    d.add_argument("--raw", action="store_true", help="publish VALUE as the whole payload, unchecked")

    f = sub.add_parser("fault", help="set fault knobs")
    f.add_argument("target", help="token, catalog, credentials, revoke, ack, or clear")
    f.add_argument("--status", type=int)
    f.add_argument("--retry-after", type=int)
    f.add_argument("--delay", type=float)
    f.add_argument("--stall", action="store_true")
    f.add_argument("--garbage", action="store_true")
    f.add_argument("--huge", type=int)
    f.add_argument("--times", type=int)
    f.add_argument("--silent", action="store_true", help="ack: stop answering")
    f.add_argument("--resume", action="store_true", help="ack: answer again")
    f.add_argument("--error", type=int, help="ack: answer the next N with status error")

    sub.add_parser("broker-restart", help="restart mosquitto")
    sub.add_parser("status", help="show the running cloud's state")
    sub.add_parser("info", help="print run.json: URLs, CA, demo device")

    a = p.parse_args(argv)
    if a.cmd in (None, "serve"):
        from .server import Cloud
        if a.cmd is None:
            a = p.parse_args(["--state", a.state, "serve"])
        lifetimes = {"credential_ttl": a.credential_ttl, "renew_after": a.renew_after,
                     "hard_ttl": a.hard_ttl, "token_ttl": a.token_ttl}
        try:
            cloud = Cloud(a.state, a.http_port, a.mqtt_port, a.fleet, quiet=a.quiet, lifetimes=lifetimes,
                          server_names=a.server_name, broker_url=a.broker_url, listen=a.listen,
                          public_host=a.public_host)
            asyncio.run(cloud.run())
        except (OSError, ValueError, RuntimeError) as exc:
            sys.exit("realer: %s" % exc)
        return 0
    if a.cmd == "desired":
        body = {"route": a.route}
        if a.device is not None:
            body["device_id"] = a.device
        if a.raw:
            body["raw"] = a.value
        else:
            body.update(value=_value(a.value), valid_for=a.valid_for)
            if a.sequence is not None:
                body["sequence_number"] = a.sequence
        out = _admin(a.state, "POST", "/admin/desired", body)
    elif a.cmd == "fault":
        if a.target == "clear":
            out = _admin(a.state, "DELETE", "/admin/faults")
        elif a.target == "ack":
            body = {"target": "ack"}
            if a.silent or a.resume:
                body["silent"] = a.silent
            if a.error is not None:
                body["error"] = a.error
            out = _admin(a.state, "POST", "/admin/faults", body)
        else:
            body = {k: v for k, v in (("status", a.status), ("retry_after", a.retry_after),
                                      ("delay", a.delay), ("huge", a.huge), ("times", a.times))
                    if v is not None}
            body.update({k: True for k in ("stall", "garbage") if getattr(a, k)})
            body["target"] = a.target
            out = _admin(a.state, "POST", "/admin/faults", body)
    elif a.cmd == "broker-restart":
        out = _admin(a.state, "POST", "/admin/broker/restart")
    elif a.cmd == "status":
        out = _admin(a.state, "GET", "/admin/status")
    else:
        try:
            with open(os.path.join(a.state, "run.json")) as fh:
                out = json.load(fh)
        except FileNotFoundError:
            sys.exit("realer: no running cloud with state folder %s" % a.state)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
