"""TLS refusals: a server certificate that is expired, not yet valid, signed by another CA,
or for another host name is refused, with a clear firmware log line, and never followed
by a plain-text try; on the HTTPS API and on the MQTT broker.

Already covered in test_firmware_e2e.py (not repeated here): on the HTTPS API, a device
CA that is not the cloud's (`test_wrong_ca_is_refused_with_a_clear_log_line`) and a
hostname mismatch (`test_hostname_mismatch_is_refused`, the emulator's --server-name).

How: `BadTLSFront`, a small CPython TLS server in front of the real emulator. It presents
a certificate made here with `cryptography` (signed by the emulator's CA key from its
state folder, pki/ca.key, unless the case is another CA), records the first byte of every
connection (0x16 = a TLS handshake; anything else would be plain text), and, only if the
handshake completes, relays the connection to the emulator over verified TLS. So a
firmware that accepted a bad certificate would get through and bootstrap or connect:
the test would see it (log and ledger), and a control case with the emulator's own
certificate shows that the front itself lets a good client through.

The API cases put the front at config.json's api_url; the MQTT cases run an emulator
whose catalog advertises the front as broker_url (--broker-url), so the HTTPS bootstrap
is real and only the broker's certificate is bad. mbedTLS checks validity against the
system clock (the unix port's, here the host's).
"""
import datetime
import os
import socket
import ssl
import tempfile
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import fault_report
from realer_harness import free_port
from tools.realer import pki

pytestmark = pytest.mark.fault

DAY = datetime.timedelta(days=1)


def _bad_cert(state, kind):
    """(cert PEM path, key path) for a server certificate of the given kind."""
    if kind == "good":
        return os.path.join(state, "pki", "server.pem"), os.path.join(state, "pki", "server.key")
    with open(os.path.join(state, "pki", "ca.key"), "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(state, "pki", "ca.pem"), "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    now = datetime.datetime.now(datetime.timezone.utc)
    kw = {}
    if kind == "expired":
        kw = dict(not_before=now - 30 * DAY, not_after=now - DAY)
    elif kind == "not_yet_valid":
        kw = dict(not_before=now + DAY, not_after=now + 30 * DAY)
    elif kind == "other_ca":
        ca_key, ca_cert = pki.make_ca("ugate test: not the cloud's CA")
    elif kind == "hostname":
        kw = dict(names=("gateway.example.com",), ips=())
    else:
        raise ValueError(kind)
    key, cert = pki.make_server_cert(ca_key, ca_cert, **kw)
    folder = tempfile.mkdtemp(prefix="badtls-")
    pki.write_pair(folder, key, cert, "server.pem", "server.key")
    return os.path.join(folder, "server.pem"), os.path.join(folder, "server.key")


class BadTLSFront:
    """A TLS server on `port` with a chosen certificate; relays completed handshakes to
    127.0.0.1:upstream over TLS verified with `ca`."""

    def __init__(self, port, ca):
        self.port, self.ca = port, ca
        self.upstream = None
        self.first_bytes = []  # one per connection
        self.handshakes_ok = 0
        self.refusals = []  # server-side handshake errors (the client's alert)
        self.ctx = None
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.quit = False
        threading.Thread(target=self._serve, daemon=True).start()

    def use(self, certfile, keyfile):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        self.ctx = ctx
        self.first_bytes, self.handshakes_ok, self.refusals = [], 0, []

    def _serve(self):
        while not self.quit:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn, self.ctx), daemon=True).start()

    def _one(self, conn, ctx):
        conn.settimeout(10)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
            self.first_bytes.append(first[:1])
            if first[:1] != b"\x16":
                conn.close()
                return
            try:
                tls = ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.refusals.append(str(e))
                conn.close()
                return
            self.handshakes_ok += 1
            up = ssl.create_default_context(cafile=self.ca).wrap_socket(
                socket.create_connection(("127.0.0.1", self.upstream), timeout=10),
                server_hostname="localhost")
            for a, b in ((tls, up), (up, tls)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
        except OSError:
            conn.close()

    @staticmethod
    def _pipe(a, b):
        a.settimeout(None)
        try:
            while True:
                data = a.recv(16384)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.quit = True
        self.sock.close()


# What the firmware's log line must name, per case (mbedTLS's verify messages).
EXPECT = {
    "expired": ("expired",),
    "not_yet_valid": ("future",),
    "other_ca": ("not correctly signed", "trusted ca", "verif"),
    "hostname": ("cn", "name"),
}


def _refused(f, front, kind, where):
    """Wait for two refusals (the first try and a retry); check the line and the wire."""
    t0 = time.monotonic()
    lines = [f.wait_log(r"tls: refused: .*\(%s" % where, timeout=20)]
    detect = time.monotonic() - t0
    lines.append(f.wait_log(r"tls: refused: .*\(%s" % where, timeout=20))
    for line in lines:
        assert any(w in line.lower() for w in EXPECT[kind]), (kind, line)
    time.sleep(0.3)
    assert front.handshakes_ok == 0, "a %s certificate was accepted" % kind
    assert len(front.first_bytes) >= 2
    assert set(front.first_bytes) == {b"\x16"}, "not a TLS handshake: %r" % front.first_bytes
    return lines[0], detect


# --- the HTTPS API --------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_front(_shared_cloud):
    front = BadTLSFront(free_port(), _shared_cloud.ca)
    front.upstream = _shared_cloud.http_port
    yield front
    front.close()


@pytest.mark.parametrize("kind", ["good", "expired", "not_yet_valid"])
def test_api_certificate(kind, cloud, fw, api_front):
    t0 = time.monotonic()
    api_front.use(*_bad_cert(cloud.state, kind))
    f = fw()
    f.edit_config(lambda c: c["cloud"].update(api_url="https://localhost:%d" % api_front.port))
    before = cloud.ledger("SELECT COUNT(*) FROM tokens")[0][0]
    f.start()
    if kind == "good":  # the control: the front lets a verifying client through
        f.wait_log(r"bootstrap: token ok")
        f.wait_log(r"mqtt: connected")
        assert api_front.handshakes_ok >= 1
        fault_report.record("tls api control (emulator's own certificate)", faults=0, crashes=0,
                            run_s=time.monotonic() - t0, notes="bootstrap through the TLS front: ok")
        return
    line, detect = _refused(f, api_front, kind, "HTTPS")
    assert not any("bootstrap: token ok" in x for x in f.lines)
    assert cloud.ledger("SELECT COUNT(*) FROM tokens")[0][0] == before  # no request got through
    assert f.output("relay") is False  # safe meanwhile
    fault_report.record("tls api: %s certificate" % kind, faults=len(api_front.first_bytes),
                        crashes=int(any("Traceback" in x for x in f.lines)), detect_s=detect,
                        run_s=time.monotonic() - t0, notes=line.split("tls: ", 1)[1][:110])


# --- the MQTT broker --------------------------------------------------------------------

@pytest.fixture(scope="module")
def mqtt_front(tmp_path_factory):
    from realer_harness import RunningCloud
    port = free_port()
    c = RunningCloud(tmp_path_factory.mktemp("realer-badbroker"), "--broker-url",
                     "mqtts://localhost:%d" % port, "--quiet")
    front = BadTLSFront(port, c.ca)
    front.upstream = c.mqtt_port
    yield c, front
    front.close()
    c.stop()


@pytest.mark.parametrize("kind", ["good", "expired", "not_yet_valid", "other_ca", "hostname"])
def test_broker_certificate(kind, fw, mqtt_front):
    t0 = time.monotonic()
    c, front = mqtt_front
    front.use(*_bad_cert(c.state, kind))
    f = fw(c)
    f.start()
    f.wait_log(r"bootstrap: credential realer-")
    if kind == "good":
        f.wait_log(r"mqtt: connected to localhost:%d" % front.port)
        f.set_input("temperature", 33.5)
        f.wait_log(r"ack: temperature accepted")
        fault_report.record("tls broker control (emulator's own certificate)", faults=0, crashes=0,
                            run_s=time.monotonic() - t0, notes="MQTT through the TLS front: ok")
        return
    sessions_before = c.ledger("SELECT COUNT(*) FROM received")[0][0]
    line, detect = _refused(f, front, kind, "MQTT localhost:%d" % front.port)
    f.set_input("temperature", 34.5)
    time.sleep(0.5)
    assert not any("mqtt: connected" in x for x in f.lines)
    assert not any("publish:" in x for x in f.lines)
    assert c.ledger("SELECT COUNT(*) FROM received")[0][0] == sessions_before
    fault_report.record("tls broker: %s certificate" % kind, faults=len(front.first_bytes),
                        crashes=int(any("Traceback" in x for x in f.lines)), detect_s=detect,
                        run_s=time.monotonic() - t0, notes=line.split("tls: ", 1)[1][:110])
