"""A small HTTPS/1.1 client for the bootstrap calls: verified TLS, asyncio, bounded.

The frozen ``requests`` never checks the server and blocks the loop; here every call
goes through ``tls.open_tls`` (CA and name checked), has one deadline, and bounded reads::

    r = await http.request("POST", api + "/oauth/token", tls.context(ca_der),
                           {"Authorization": http.basic_auth(cid, secret), "Content-Type": FORM},
                           http.form_encode({"grant_type": "client_credentials"}))

Limits break the call with HTTPError; the deadline with OSError(110, "timeout").
"""
import asyncio
import binascii

from firmware import VERSION
from firmware.compat import const, wait_for_ms
from firmware.net.tls import open_tls

_MAX_HEADERS = const(32)
_MAX_LINE = const(1024)  # one status/header/chunk-size line, CRLF included
_READ = const(512)
_ONE_WRITE = const(1024)  # head and body go out in one write up to this size
_ETIMEDOUT = const(110)
_DIGITS = b"0123456789abcdefABCDEF"
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


class HTTPError(OSError):
    """The server broke the protocol or a limit of ours; str(e) says which."""


class Response:
    """status, reason, headers (lower-case names), body (a bytearray, not copied)."""

    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    def json(self):
        import json  # only the calls that need it pay for the module
        return json.loads(self.body)

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)


def parse_url(url):
    """(host, port, path) of an https:// URL; anything else is a ValueError."""
    if not isinstance(url, str) or url[:8].lower() != "https://":
        raise ValueError("only https:// URLs are allowed: %r" % (url,))
    rest = url[8:].split("#")[0]
    i = min(j for j in (rest.find("/"), rest.find("?"), len(rest)) if j >= 0)
    host, sep, port = rest[:i].rpartition(":")
    if not sep:
        host, port = rest[:i], "443"
    port = _int(port, 10)
    if not host or "@" in host or "[" in host or " " in host or not 0 < port < 65536:
        raise ValueError("bad host or port in URL %r" % (url,))
    return host, port, ("" if rest[i:i + 1] == "/" else "/") + rest[i:]


def _int(s, base):
    """A non-negative int of plain digits (no sign, space or _), else -1."""
    d = _DIGITS if isinstance(s, bytes) else _DIGITS.decode()
    return -1 if not s or s.strip(d[:base + (6 if base > 10 else 0)]) else int(s, base)


def _quote(s):
    """Form-urlencoding (WHATWG/RFC 6749 B): unreserved kept, space as +, rest %XX."""
    out = bytearray()  # one growing buffer, not a list of one-character strings
    for b in str(s).encode():
        if b in _UNRESERVED:
            out.append(b)
        elif b == 32:
            out.append(43)
        else:
            out.extend(b"%%%02X" % b)
    return out.decode()


def form_encode(fields):
    """application/x-www-form-urlencoded from a dict (or a list of pairs, for a fixed order)."""
    items = fields.items() if hasattr(fields, "items") else fields
    return "&".join(_quote(k) + "=" + _quote(v) for k, v in items)


def basic_auth(user, password):
    """RFC 6749 2.3.1 client authentication: both parts form-urlencoded, then Basic."""
    raw = (_quote(user) + ":" + _quote(password)).encode()
    return "Basic " + binascii.b2a_base64(raw).rstrip(b"\n").decode()


def _encode(method, host, port, path, headers, body):
    """The request bytes as (head, body); body is b"" when there is none."""
    ctype = None
    if isinstance(body, dict):
        import json
        body, ctype = json.dumps(body), "application/json"
    if isinstance(body, str):
        body = body.encode()
    lines = ["%s %s HTTP/1.1" % (method, path),
             "Host: " + (host if port == 443 else "%s:%d" % (host, port)),
             "Connection: close"]
    given = [k.lower() for k in headers] if headers else ()
    if "user-agent" not in given:
        lines.append("User-Agent: ugate/" + VERSION)
    if body is not None:
        if ctype and "content-type" not in given:
            lines.append("Content-Type: " + ctype)
        lines.append("Content-Length: %d" % len(body))
    lines += ["%s: %s" % (k, headers[k]) for k in headers or ()]
    lines.append("\r\n")
    return "\r\n".join(lines).encode(), body or b""


class _In:
    """Reads through one small buffer so that no line can grow past _MAX_LINE."""

    def __init__(self, reader):
        self.r = reader
        self.buf = b""

    async def _more(self, n=_READ):
        data = await self.r.read(n)
        if not data:
            raise HTTPError("connection closed early")
        self.buf += data

    async def line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= _MAX_LINE or (i < 0 and len(self.buf) >= _MAX_LINE):
                raise HTTPError("line longer than %d bytes" % _MAX_LINE)
            if i >= 0:
                out, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return out.rstrip(b"\r\n")
            await self._more()

    async def fill(self, out, pos, n):
        """Fill out[pos:pos + n] in place: a body never passes through growing copies."""
        mv = memoryview(out)
        k = min(n, len(self.buf))
        mv[pos:pos + k] = self.buf[:k]
        self.buf = self.buf[k:]
        pos, end = pos + k, pos + n
        while pos < end:
            data = await self.r.read(min(end - pos, _READ))
            if not data:
                raise HTTPError("connection closed early")
            mv[pos:pos + len(data)] = data
            pos += len(data)

    async def rest(self, out, limit):
        """Append everything up to EOF, failing past `limit` bytes."""
        while True:
            out += self.buf
            if len(out) > limit:
                raise HTTPError("body over %d bytes" % limit)
            self.buf = await self.r.read(_READ)
            if not self.buf:
                return


async def _status(inp):
    """(status, reason) from the status line."""
    parts = (await inp.line()).split(None, 2) + [b""]
    status = _int(parts[1], 10) if len(parts) > 2 and parts[0][:7] == b"HTTP/1." else -1
    try:
        if 100 <= status < 600 and len(parts[1]) == 3:
            return status, parts[2].decode()
    except ValueError:
        pass  # a reason that is not UTF-8
    raise HTTPError("bad status line")


async def _headers(inp):
    """Header (or trailer) lines up to the empty one, as a dict with lower-case names."""
    headers = {}
    for _ in range(_MAX_HEADERS + 1):
        line = await inp.line()
        if not line:
            return headers
        name, sep, value = line.partition(b":")
        try:
            name, value = name.strip().lower().decode(), value.strip().decode()
        except ValueError:
            raise HTTPError("header not UTF-8") from None
        if not sep or not name:
            raise HTTPError("bad header line")
        headers[name] = headers[name] + ", " + value if name in headers else value
    raise HTTPError("more than %d header lines" % _MAX_HEADERS)


async def _chunked(inp, out, limit):
    while True:
        size = (await inp.line()).split(b";")[0].strip()
        n = _int(size, 16)
        if n < 0:
            raise HTTPError("bad chunk size %r" % size[:16])
        if not n:
            return await _headers(inp)  # trailers: read, checked, dropped
        if len(out) + n > limit:
            raise HTTPError("chunked body over %d bytes" % limit)
        pos = len(out)
        out.extend(bytearray(n))
        await inp.fill(out, pos, n)
        if await inp.line():
            raise HTTPError("no CRLF after a chunk")


async def _exchange(method, host, port, ctx, head, body, timeout_ms, max_body, opener):
    writer = None  # the socket is closed whatever happens, cancellation included
    try:
        reader, writer = await opener(host, port, ctx, timeout_ms)
        if len(body) > _ONE_WRITE:  # else one write: one TLS record for a small request
            writer.write(head)
            head = b""
        writer.write(head + body)
        await writer.drain()
        inp = _In(reader)
        status = (100,)
        while status[0] < 200:  # skips an interim 100 Continue
            status = await _status(inp)
            headers = await _headers(inp)
        out = bytearray()
        te, cl = headers.get("transfer-encoding"), headers.get("content-length")
        if method == "HEAD" or status[0] in (204, 304):
            pass
        elif te is not None:
            if te.lower() != "chunked":
                raise HTTPError("unsupported transfer-encoding %s" % te)
            await _chunked(inp, out, max_body)
        elif cl is not None:
            n = _int(cl, 10)
            if n < 0:
                raise HTTPError("bad content-length %s" % cl[:16])
            if n > max_body:
                raise HTTPError("content-length %d over %d bytes" % (n, max_body))
            out = bytearray(n)
            await inp.fill(out, 0, n)
        else:
            await inp.rest(out, max_body)
        return Response(status[0], status[1], headers, out)
    finally:
        if writer is not None:
            writer.close()


async def request(method, url, ctx, headers=None, body=None, timeout_ms=15000,
                  max_body=16384, opener=None):
    """One HTTPS request on a fresh connection; the Response, or HTTPError/OSError.

    The whole call (connect, TLS, write, read) ends within `timeout_ms`, else
    OSError(110, "timeout"). TLS failures come through unchanged.
    """
    host, port, path = parse_url(url)
    head, data = _encode(method, host, port, path, headers, body)
    try:
        return await wait_for_ms(_exchange(method, host, port, ctx, head, data, timeout_ms,
                                           max_body, opener or open_tls), timeout_ms)
    except asyncio.TimeoutError:
        raise OSError(_ETIMEDOUT, "timeout") from None
