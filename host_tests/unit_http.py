"""firmware.net.http against canned responses (pytest on CPython; mp_runner on the unix port)."""
from fakes import FakeStream, run

from firmware import VERSION
from firmware.compat import ticks_diff, ticks_ms
from firmware.net import http

API = "https://api.example:8443"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\": [1]}\n"


class opener_for:
    """An opener handing out one FakeStream preloaded with `incoming` (kept as .stream)."""

    def __init__(self, incoming, eof=True):
        self.incoming, self.eof = incoming, eof
        self.stream = self.seen = None

    async def __call__(self, host, port, ctx, timeout_ms):
        self.seen = (host, port, ctx, timeout_ms)
        self.stream = FakeStream(self.incoming)
        if self.eof:
            self.stream.eof()
        return self.stream, self.stream


def fetch(incoming, url=API + "/x", method="GET", eof=True, **kw):
    op = opener_for(incoming, eof)
    r = run(http.request(method, url, "ctx", opener=op, **kw))
    return r, op


def fails(incoming, why, eof=True, **kw):
    """The request raises HTTPError whose text contains `why`; returns the opener."""
    op = opener_for(incoming, eof)
    try:
        run(http.request("GET", API + "/x", "ctx", opener=op, **kw))
    except http.HTTPError as e:
        assert why in str(e), str(e)
        assert op.stream.closed
        return op
    raise AssertionError("no HTTPError")


def head_and_body(written):
    head, _, body = written.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return lines[0], sorted(lines[1:]), body


# --- request bytes ------------------------------------------------------------
def test_get_request_bytes():
    r, op = fetch(OK, API + "/iot/v1/devices/7/mqtt?x=1", headers={"Authorization": "Bearer t"})
    assert op.seen == ("api.example", 8443, "ctx", 15000)
    assert len(op.stream.writes) == 1
    first, hdrs, body = head_and_body(op.stream.written)
    assert first == b"GET /iot/v1/devices/7/mqtt?x=1 HTTP/1.1"
    assert hdrs == sorted([b"Host: api.example:8443", b"Connection: close",
                           b"User-Agent: ugate/" + VERSION.encode(), b"Authorization: Bearer t"])
    assert body == b""
    assert op.stream.closed


def test_host_without_default_port():
    r, op = fetch(OK, "https://api.example/t")
    assert op.seen[:2] == ("api.example", 443)
    assert b"\r\nHost: api.example\r\n" in op.stream.written


def test_json_body_from_dict():
    r, op = fetch(OK, method="POST", body={"scopes": ["a b"]})
    first, hdrs, body = head_and_body(op.stream.written)
    assert first == b"POST /x HTTP/1.1"
    assert body == b'{"scopes": ["a b"]}' or body == b'{"scopes":["a b"]}'
    assert b"Content-Type: application/json" in hdrs
    assert b"Content-Length: %d" % len(body) in hdrs
    assert len(op.stream.writes) == 1


def test_form_body():
    form = http.form_encode([("grant_type", "client_credentials"), ("scope", "a:b c")])
    r, op = fetch(OK, method="POST", body=form,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    first, hdrs, body = head_and_body(op.stream.written)
    assert body == b"grant_type=client_credentials&scope=a%3Ab+c"
    assert b"Content-Length: 43" in hdrs
    assert b"Content-Type: application/x-www-form-urlencoded" in hdrs


def test_large_body_still_one_drain():
    big = b"x" * 5000
    r, op = fetch(OK, method="POST", body=big)
    assert op.stream.written.endswith(b"\r\n\r\n" + big)
    assert len(op.stream.writes) <= 2


# --- responses ----------------------------------------------------------------
def test_content_length_body():
    r, op = fetch(OK + b"trailing junk is not read")
    assert (r.status, r.reason) == (200, "OK")
    assert r.body == b'{"a": [1]}\n'
    assert r.json() == {"a": [1]}
    assert r.header("Content-Type") == "application/json"
    assert r.headers["content-length"] == "11"
    assert r.header("x-missing", "d") == "d"


def test_bad_json_is_valueerror():
    r, op = fetch(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{no}")
    try:
        r.json()
    except ValueError:
        return
    raise AssertionError("no ValueError")


def test_chunked_body():
    resp = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n"
            b"0\r\nX-Trailer: 1\r\n\r\n")
    r, op = fetch(resp)
    assert r.status == 201 and r.reason == "Created"
    assert r.body == b"hello 0123456789"


def test_chunked_fed_in_pieces():
    async def go():
        op = opener_for(b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nab", eof=False)
        task = asyncio.create_task(http.request("GET", API + "/x", "ctx", opener=op))
        await asyncio.sleep(0.05)
        op.stream.feed(b"c\r\n2\r\n")
        await asyncio.sleep(0.05)
        op.stream.feed(b"de\r\n0\r\n\r\n")
        return await task
    import asyncio
    r = run(go())
    assert r.body == b"abcde"


def test_eof_delimited_body():
    r, op = fetch(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n" + b"y" * 3000)
    assert r.body == b"y" * 3000


def test_no_body_statuses():
    r, op = fetch(b"HTTP/1.1 204 No Content\r\n\r\n", eof=False)
    assert r.status == 204 and r.body == b""
    r, op = fetch(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
    assert r.status == 200 and r.reason == ""
    r, op = fetch(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert r.status == 200 and r.body == b"ok"


def test_repeated_header_joined():
    r, op = fetch(b"HTTP/1.1 200 OK\r\nVia: a\r\nvia: b\r\nContent-Length: 0\r\n\r\n")
    assert r.header("via") == "a, b"


def test_oversized_content_length_not_read():
    # no body and no EOF: reading it would stall until the timeout
    fails(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", "100000", eof=False,
          max_body=16384, timeout_ms=5000)


def test_chunked_over_limit():
    fails(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"10\r\n0123456789abcdef\r\n10\r\n", "over 20", eof=False, max_body=20, timeout_ms=5000)


def test_eof_body_over_limit():
    fails(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 101, "over 100", max_body=100)


def test_bad_chunks():
    fails(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size")
    fails(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "chunk size")
    fails(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", "CRLF")
    fails(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n", "chunk size")
    fails(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer-encoding")


def test_bad_content_length():
    for cl in (b"-1", b"+5", b"1_0", b"5x", b""):
        fails(b"HTTP/1.1 200 OK\r\nContent-Length: " + cl + b"\r\n\r\nhello", "content-length")


def test_too_many_headers():
    many = b"".join(b"X-%d: v\r\n" % i for i in range(33))
    fails(b"HTTP/1.1 200 OK\r\n" + many + b"\r\n", "header lines")
    r, op = fetch(b"HTTP/1.1 200 OK\r\n" + many[:-len(b"X-32: v\r\n")] + b"\r\n")
    assert len(r.headers) == 32


def test_header_line_too_long():
    line = b"X-Long: " + b"a" * (1024 - 10) + b"\r\n"  # exactly 1024 bytes: allowed
    assert len(line) == 1024
    r, op = fetch(b"HTTP/1.1 200 OK\r\n" + line + b"Content-Length: 0\r\n\r\n")
    assert len(r.header("x-long")) == 1014
    fails(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 1015 + b"\r\n\r\n", "longer than 1024")
    # a line without end is refused once 1024 bytes are in, not read further
    fails(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 3000, "longer than 1024", eof=False)


def test_malformed_status_lines():
    for bad in (b"HTTP/1.1 2000 OK\r\n\r\n", b"garbage\r\n\r\n", b"ICY 200 OK\r\n\r\n",
                b"HTTP/1.1 abc OK\r\n\r\n", b"\r\n",
                b"HTTP/1.1 +20 OK\r\n\r\n", b"HTTP/1.1 099 OK\r\n\r\n"):
        fails(bad, "status line")
    fails(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line")


def test_truncated_bodies():
    fails(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed early")
    fails(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "closed early")
    fails(b"HTTP/1.1 200 OK\r\nContent-Len", "closed early")
    fails(b"", "closed early")


def test_stalling_server_times_out():
    op = opener_for(b"", eof=False)
    t0 = ticks_ms()
    try:
        run(http.request("GET", API + "/x", "ctx", timeout_ms=200, opener=op))
    except http.HTTPError:
        raise AssertionError("a timeout is not a protocol error")
    except OSError as e:
        assert e.errno == 110 and "timeout" in str(e), repr(e)
    else:
        raise AssertionError("no timeout")
    took = ticks_diff(ticks_ms(), t0)
    assert 150 <= took < 1000, took
    assert op.stream.closed
    assert op.seen[3] == 200


def test_stalling_connect_times_out():
    async def never(host, port, ctx, timeout_ms):
        import asyncio
        await asyncio.sleep(10)
    t0 = ticks_ms()
    try:
        run(http.request("GET", API, "ctx", timeout_ms=200, opener=never))
    except OSError as e:
        assert e.errno == 110
    else:
        raise AssertionError("no timeout")
    assert ticks_diff(ticks_ms(), t0) < 1000


def test_http_url_never_connects():
    op = opener_for(OK)
    try:
        run(http.request("GET", "http://api.example/x", "ctx", opener=op))
    except ValueError as e:
        assert "only https" in str(e)
    else:
        raise AssertionError("http:// accepted")
    assert op.stream is None


# --- helpers ----------------------------------------------------------------------
def test_parse_url():
    assert http.parse_url("https://api.example:8443/oauth/token") == ("api.example", 8443, "/oauth/token")
    assert http.parse_url("https://api.example/a/b?c=d") == ("api.example", 443, "/a/b?c=d")
    assert http.parse_url("https://api.example") == ("api.example", 443, "/")
    assert http.parse_url("https://127.0.0.1:9") == ("127.0.0.1", 9, "/")
    assert http.parse_url("https://h?q=1") == ("h", 443, "/?q=1")
    assert http.parse_url("HTTPS://h/p#frag") == ("h", 443, "/p")


def test_parse_url_refusals():
    for url in ("http://api.example/x", "mqtts://h:8883", "api.example/x", "", "ftp://h"):
        try:
            http.parse_url(url)
        except ValueError as e:
            assert "only https" in str(e), str(e)
        else:
            raise AssertionError("accepted " + url)
    for url in ("https://", "https://:443/x", "https://h:0/", "https://h:x/", "https://h:70000",
                "https://u:p@h/", "https://a b/"):
        try:
            http.parse_url(url)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted " + url)
    try:
        http.parse_url(None)
    except ValueError:
        pass
    else:
        raise AssertionError("accepted None")


def test_basic_auth():
    assert http.basic_auth("dev-1", "s3cret") == "Basic ZGV2LTE6czNjcmV0"
    # RFC 6749 2.3.1: "a:b c" -> "a%3Ab+c" before base64; "p/=&" -> "p%2F%3D%26"
    assert http.basic_auth("a:b c", "p/=&") == "Basic YSUzQWIrYzpwJTJGJTNEJTI2"


def test_form_encode():
    assert http.form_encode({"grant_type": "client_credentials"}) == "grant_type=client_credentials"
    assert http.form_encode([("scope", "iot:mqtt:connect iot:catalog:read"), ("x", "A-Za-z0-9-._~")]) == \
        "scope=iot%3Amqtt%3Aconnect+iot%3Acatalog%3Aread&x=A-Za-z0-9-._~"
    assert http.form_encode([("k y", "+&=%/\u00e9"), ("n", 5)]) == "k+y=%2B%26%3D%25%2F%C3%A9&n=5"
    assert http.form_encode({}) == ""
