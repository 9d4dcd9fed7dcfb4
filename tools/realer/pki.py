"""A throw-away local PKI for the emulator: one CA and one server certificate.

Made at first start in the state folder and reused after. The CA is written
as PEM (for CPython clients and mosquitto) and as DER (MicroPython's
``SSLContext.load_verify_locations(cadata=...)`` wants DER).
"""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_PEM = "ca.pem"
CA_DER = "ca.der"
CA_KEY = "ca.key"
SERVER_PEM = "server.pem"
SERVER_KEY = "server.key"

# The names the server certificate is valid for.
SERVER_NAMES = ("localhost",)
SERVER_IPS = ("127.0.0.1",)


def _key():
    # P-256: small, fast, and supported by the mbedTLS build of MicroPython.
    return ec.generate_private_key(ec.SECP256R1())


def _write(path, data, private=False):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name="ugate local Realer CA", not_before=None, not_after=None):
    """Return (key, certificate) of a new self-signed CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(days=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key, ca_cert, names=SERVER_NAMES, ips=SERVER_IPS,
                     not_before=None, not_after=None):
    """Return (key, certificate) for a TLS server, signed by the CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = _key()
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else ips[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(days=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_pair(folder, key, cert, cert_name, key_name, der_name=None):
    _write(os.path.join(folder, key_name), _pem_key(key), private=True)
    _write(os.path.join(folder, cert_name), cert.public_bytes(serialization.Encoding.PEM))
    if der_name:
        _write(os.path.join(folder, der_name), cert.public_bytes(serialization.Encoding.DER))


def _names_of(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(i) for i in san.get_values_for_type(x509.IPAddress)}


def ensure(folder, names=SERVER_NAMES, ips=SERVER_IPS):
    """Make the CA and server certificate in `folder` unless they are there.

    Returns a dict of the file paths. A server certificate that expires within
    30 days, was not signed by the CA on disk, or is for other names, is made anew.
    """
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, v) for k, v in (
        ("ca", CA_PEM), ("ca_der", CA_DER), ("ca_key", CA_KEY),
        ("cert", SERVER_PEM), ("key", SERVER_KEY))}
    if not all(os.path.exists(paths[k]) for k in ("ca", "ca_der", "ca_key")):
        ca_key, ca_cert = make_ca()
        write_pair(folder, ca_key, ca_cert, CA_PEM, CA_KEY, CA_DER)
        for k in ("cert", "key"):
            if os.path.exists(paths[k]):
                os.remove(paths[k])
    with open(paths["ca_key"], "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(paths["ca"], "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    fresh = False
    if os.path.exists(paths["cert"]) and os.path.exists(paths["key"]):
        with open(paths["cert"], "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
        fresh = (cert.issuer == ca_cert.subject and left > datetime.timedelta(days=30)
                 and _names_of(cert) == set(names) | set(ips))
        if fresh:
            try:
                cert.verify_directly_issued_by(ca_cert)
            except (InvalidSignature, ValueError, TypeError):
                fresh = False
    if not fresh:
        key, cert = make_server_cert(ca_key, ca_cert, tuple(names), tuple(ips))
        write_pair(folder, key, cert, SERVER_PEM, SERVER_KEY)
    return paths
