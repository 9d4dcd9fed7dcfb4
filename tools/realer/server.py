"""Runs the local Realer cloud: PKI, mosquitto, the application service and the HTTPS API.

``Cloud.run()`` serves in the foreground until SIGINT or SIGTERM, then stops the
API, the service and the broker, in that order, and removes ``run.json``.
"""
import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
import time

import uvicorn

from . import api, broker, fleet as _fleet, pki
from .appservice import AppService
from .faults import Faults
from .ledger import Ledger

DEFAULT_STATE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "state", "realer")


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _listening(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as exc:
        s.close()
        raise OSError("the HTTPS API cannot listen on %s:%d: %s" % (host, port, exc)) from exc
    return s


class _Server(uvicorn.Server):
    # The emulator handles signals itself so that it always stops the broker.
    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Cloud:
    def __init__(self, state=DEFAULT_STATE, http_port=8443, mqtt_port=8883, fleet_path=None,
                 host="127.0.0.1", public_host="localhost", quiet=False, lifetimes=None,
                 server_names=None, broker_url=None, listen=()):
        self.state = os.path.abspath(state)
        self.http_port = http_port
        self.mqtt_port = mqtt_port
        self.host = host
        self.listen = tuple(a for a in listen if a != host)  # more addresses for the API and broker
        self.public_host = public_host
        self.quiet = quiet
        os.makedirs(self.state, exist_ok=True)
        os.chmod(self.state, 0o700)
        if server_names:  # a certificate for other names only (hostname-mismatch tests)
            names, ips = tuple(server_names), ()
        else:
            names, ips = pki.SERVER_NAMES, pki.SERVER_IPS
        if public_host != "localhost" and public_host not in names + ips:  # it must verify too
            if _is_ip(public_host):
                ips += (public_host,)
            else:
                names += (public_host,)
        self.pki = pki.ensure(os.path.join(self.state, "pki"), names, ips)
        self.broker_url = broker_url or "mqtts://%s:%d" % (public_host, mqtt_port)
        self.fleet_path = os.path.abspath(fleet_path or _fleet.DEFAULT_FLEET)
        self.fleet = _fleet.load(self.fleet_path, self.state)
        self.fleet.set_lifetimes(**(lifetimes or {}))
        self.ledger = Ledger(os.path.join(self.state, "ledger.sqlite"))
        self.faults = Faults()
        self.admin_token = secrets.token_urlsafe(24)
        self.broker = broker.Broker(os.path.join(self.state, "broker"), mqtt_port, self.pki, host,
                                    check_hostname=not server_names, also=self.listen)
        self.dynsec = None
        self.app = None
        self.started = time.time()

    def log(self, text):
        if not self.quiet:
            print("%s realer: %s" % (time.strftime("%H:%M:%S"), text), flush=True)

    # --- credentials -----------------------------------------------------
    def remove_credential(self, username, why):
        self.dynsec.remove_credential(username)
        self.ledger.remove_credential(username, why)
        self.ledger.event("credential_removed", username=username, why=why)
        self.log("credential %s removed (%s); its session is kicked" % (username, why))

    async def _expiry(self):
        while True:
            for username in self.ledger.due_credentials(time.time()):
                try:
                    await asyncio.to_thread(self.remove_credential, username, "hard expiry")
                except broker.BrokerError as exc:
                    self.log("could not remove %s yet: %s" % (username, exc))
            await asyncio.sleep(0.25)

    def restart_broker(self):
        self.log("broker restart (fault knob)")
        self.ledger.event("broker_restart")
        self.broker.restart()

    def status(self):
        return {"pid": os.getpid(), "uptime": round(time.time() - self.started, 1),
                "broker_running": self.broker.running, "ack_silent": self.app.silent,
                "faults": self.faults.snapshot(), "live_credentials": self.ledger.live_credentials()}

    # --- life cycle ------------------------------------------------------
    def _run_info(self):
        demo = self.fleet.clients[0]
        return {
            "pid": os.getpid(),
            "api_url": "https://%s:%d" % (self.public_host, self.http_port),
            "broker_url": self.broker_url,
            "http_port": self.http_port, "mqtt_port": self.mqtt_port,
            "ca": self.pki["ca"], "ca_der": self.pki["ca_der"],
            "admin_token": self.admin_token,
            "ledger": self.ledger.path,
            "fleet": self.fleet_path,
            "devices": [{"device_id": c.device_id, "client_id": c.client_id,
                         "client_secret": c.client_secret,
                         "mqtt_client_id": self.fleet.device_by_id[c.device_id].mqtt_client_id}
                        for c in self.fleet.clients],
            "demo": {"device_id": demo.device_id, "client_id": demo.client_id,
                     "client_secret": demo.client_secret},
        }

    def _write_run_info(self):
        path = os.path.join(self.state, "run.json")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._run_info(), f, indent=1)
        os.replace(tmp, path)
        return path

    async def run(self):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        expiry = None
        server = None
        try:
            t0 = time.monotonic()
            self.broker.start()
            self.dynsec = broker.DynSec(self.broker)
            await asyncio.to_thread(self.dynsec.start)
            self.app = AppService(self.fleet, self.ledger, self.broker, self.faults, self.log)
            await asyncio.to_thread(self.app.start)
            config = uvicorn.Config(
                api.build(self), host=self.host, port=self.http_port, log_level="warning",
                ssl_certfile=self.pki["cert"], ssl_keyfile=self.pki["key"], lifespan="off",
                timeout_graceful_shutdown=1, access_log=False,
                date_header=False)  # api._Dated stamps each answer instead
            server = _Server(config)
            # Extra addresses (another network namespace's way in): uvicorn binds one host
            # itself, so with more it is handed its sockets, bound here.
            sockets = [_listening(a, self.http_port) for a in (self.host,) + self.listen
                       ] if self.listen else None
            serving = asyncio.ensure_future(server.serve(sockets=sockets))
            while not server.started:
                if serving.done():
                    serving.result()
                    raise OSError("the HTTPS API stopped at start (port %d in use?)" % self.http_port)
                await asyncio.sleep(0.02)
            expiry = asyncio.ensure_future(self._expiry())
            self._write_run_info()
            self._banner(time.monotonic() - t0)
            await stop.wait()
            self.log("stopping")
        finally:
            if server is not None:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(serving, 5)
            if expiry is not None:
                expiry.cancel()
            if self.app is not None:
                self.app.stop()
            if self.dynsec is not None:
                self.dynsec.stop()
            self.broker.stop()
            self.ledger.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.state, "run.json"))
            print("realer: stopped", flush=True)

    def _banner(self, took):
        info = self._run_info()
        demo = info["demo"]
        lines = [
            "local Realer cloud is up (%.1f s)" % took,
            "  HTTPS API    %s" % info["api_url"],
            "  MQTT broker  %s (TLS, dynamic-security ACLs)" % info["broker_url"],
            "  CA           %s" % info["ca"],
            "  CA (DER)     %s" % info["ca_der"],
            "  ledger       %s" % info["ledger"],
            "  demo device  device_id=%d client_id=%s client_secret=%s" % (
                demo["device_id"], demo["client_id"], demo["client_secret"]),
            "  credentials  expire in %ds, renew after %ds" % (
                self.fleet.credential_expires_in, self.fleet.credential_renew_after),
        ]
        for line in lines:
            print(line, flush=True)
        print("realer: ready", flush=True)
        sys.stdout.flush()
