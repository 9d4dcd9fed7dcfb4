"""Fault knobs: make the local cloud misbehave on purpose, for tests.

HTTPS endpoints (``token``, ``catalog``, ``credentials``, ``revoke``) take:
  status       answer with this HTTP status and a JSON error body
  retry_after  add a Retry-After header (seconds)
  delay        wait this many seconds before answering (normally or with the fault)
  stall        never answer: hold the request until the client gives up
  garbage      answer 200 with bytes that are not JSON
  huge         answer 200 with a valid JSON body of about this many bytes
  times        apply to this many requests, then clear (default: until cleared)
The ack service takes:
  silent       stop consuming feed data (the broker queues it) until cleared
  error        answer the next `times` feed-data messages with status "error"
"""
import threading

ENDPOINTS = ("token", "catalog", "credentials", "revoke")
HTTP_KEYS = {"status": int, "retry_after": int, "delay": float, "stall": bool, "garbage": bool,
             "huge": int, "times": int}


class FaultError(ValueError):
    pass


class Faults:
    def __init__(self):
        self._lock = threading.Lock()
        self.http = {}
        self.ack_errors = 0
        self.hits = {e: 0 for e in ENDPOINTS}

    def set_http(self, endpoint, knob):
        if endpoint not in ENDPOINTS:
            raise FaultError("unknown endpoint %r; one of %s" % (endpoint, ", ".join(ENDPOINTS)))
        clean = {}
        for k, v in knob.items():
            kind = HTTP_KEYS.get(k)
            if kind is None:
                raise FaultError("unknown knob %r; one of %s" % (k, ", ".join(HTTP_KEYS)))
            if isinstance(v, bool) and kind is not bool:
                raise FaultError("%s must be a number" % k)
            try:
                clean[k] = kind(v)
            except (TypeError, ValueError):
                raise FaultError("%s must be %s" % (k, kind.__name__)) from None
        if "status" in clean and not 100 <= clean["status"] <= 599:
            raise FaultError("status must be an HTTP status code")
        if not clean:
            raise FaultError("give at least one knob")
        with self._lock:
            self.http[endpoint] = clean

    def take_http(self, endpoint):
        """The knob for this request (counting it down), or None."""
        with self._lock:
            knob = self.http.get(endpoint)
            if knob is None:
                return None
            self.hits[endpoint] += 1
            if "times" in knob:
                knob["times"] -= 1
                if knob["times"] <= 0:
                    del self.http[endpoint]
            return dict(knob)

    def set_ack_errors(self, n):
        with self._lock:
            self.ack_errors = max(0, int(n))

    def take_ack_error(self):
        with self._lock:
            if self.ack_errors > 0:
                self.ack_errors -= 1
                return True
            return False

    def clear(self):
        with self._lock:
            self.http.clear()
            self.ack_errors = 0

    def snapshot(self):
        with self._lock:
            return {"http": {k: dict(v) for k, v in self.http.items()}, "ack_errors": self.ack_errors,
                    "hits": dict(self.hits)}
