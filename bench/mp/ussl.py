"""`ussl` for the stock umqtt.simple baseline (bench only, never on a device).

umqtt.simple 1.3.4 (PyPI) does `import ussl; ussl.wrap_socket(sock, **ssl_params)`; that
module no longer exists. This maps the call onto the same verified TLS the firmware uses
(firmware.net.tls.context: CERT_REQUIRED, server_hostname), and sets TCP_NODELAY on the
socket first when ssl_params asks (`nodelay=True`) so both umqtt rows use one code path.
"""
from firmware.net import tls


def wrap_socket(sock, ca=None, server_hostname=None, nodelay=False):
    if nodelay:
        sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    return tls.context(ca).wrap_socket(sock, server_hostname=server_hostname)
