"""The gateway: one asyncio program with a supervisor and one task per concern.

    supervisor: bootstrap (token -> catalog -> credential) -> session -> run,
                and back with exponential backoff and full jitter
    session:    TLS + CONNECT + SUBSCRIBE, then watch the link and renewal
    sampler:    polls sensor routes into the outbox
    sender:     publishes outbox entries (QoS 1) while the link is up
    (the MQTT client runs its own reader and keepalive tasks)

Acks and desired-state messages arrive through the MQTT reader's callback.
"""
import asyncio
import gc

from firmware import outbox as _outbox
from firmware.backoff import Backoff
from firmware.cloud import realer
from firmware.compat import const, heap, log, ticks_add, ticks_diff, ticks_ms, unload, utc_iso, wait_for_ms
from firmware.net import mqtt as _mqtt, tls

_SAMPLE_MS = const(250)
_WATCH_MS = const(200)
_SEEN_MAX = const(16)
_WDT_MS = const(30000)
_FLUSH_MS = const(5000)
_BREAKER = const(3)  # authentication failures in a row that open the circuit
_BREAKER_MS = const(300000)  # then 5 min between tries, doubling up to an hour
_BREAKER_CAP_MS = const(3600000)


def _why(e):
    """An exception's message on one line (mbedTLS messages start with a newline)."""
    return " ".join(str(e).split()) or type(e).__name__


class Gateway:
    def __init__(self, cfg, store, routes, root="."):
        self.cfg = cfg
        self.root = root
        self.started = self._down_since = ticks_ms()
        self._healthy = False
        self.store = store
        self.routes = routes
        self.ctx = tls.context(cfg.ca)
        self.cloud = realer.Realer(cfg, self.ctx)
        self.outbox = _outbox.Outbox(cfg.outbox_capacity, when_full=cfg.outbox_when_full,
                                     spill_path=root + "/outbox.dat" if cfg.outbox_spill else None)
        n = self.outbox.load()
        if n:
            log("outbox", "%d unacknowledged events from before the restart, same message_ids" % n)
        self._spilled = n > 0
        self.mqtt = _mqtt.MQTTClient(self._on_message, keepalive=cfg.keepalive, max_packet=4096)
        # Its receive buffer now, while the heap is whole: made after the bootstrap it could
        # find no 4 KB in one piece (objects kept from the bootstrap's peak lie scattered).
        self.mqtt.reserve()
        self.link_up = asyncio.Event()
        self.link_down = asyncio.Event()
        self.link_down.set()
        self.work = asyncio.Event()
        self.stopping = False
        self._topics = {}  # MQTT topic -> (kind, route)
        self._seen = {}  # the last _SEEN_MAX desired_ids answered -> order of arrival
        self._nseen = 0
        self.sessions = 0
        self._stage = ""

    # --- events into the outbox -------------------------------------------
    def report(self, route, value, desired_id=None, status=None):
        try:
            mid = self.store.next_message_id()
        except OSError as e:
            # Without a reserved id we could reuse one after a reboot; better to skip.
            log("store", "cannot reserve a message_id (%s); %s not queued" % (e, route.name))
            return None
        if route.kind == "command":
            self.store.put("relay:" + route.id, value)  # for restore "last"; flushed by the sampler
        payload = realer.feed_payload(mid, value, utc_iso(), desired_id, status)
        self.outbox.add(mid, route.id, payload, desired_id is not None)
        self.work.set()
        return mid

    async def sampler(self):
        """Sensors into the outbox; relay pulses timed out; relay levels saved (write-behind)."""
        sensors = [r for r in self.routes.values() if r.kind == "sensor"]
        pulsed = [r for r in self.routes.values() if r.kind == "command" and hasattr(r.driver, "tick")]
        leased = [r for r in self.routes.values() if r.kind == "command" and r.lease_ms]
        flush_at = ticks_ms()
        while not self.stopping:
            for r in sensors:
                if hasattr(r.driver, "refresh"):  # a DS18B20 converts: awaits, never blocks
                    await r.driver.refresh()
                v = r.poll()
                if v is not None:
                    self.report(r, v)
            for r in pulsed:
                if r.driver.tick():
                    log("relay", "%s: max on-time reached, switched off" % r.name)
                    self.report(r, r.value())
            for r in leased:
                self._lease(r)
            if ticks_diff(ticks_ms(), flush_at) >= 0:
                flush_at = ticks_add(ticks_ms(), _FLUSH_MS)
                self._persist()
            await asyncio.sleep(_SAMPLE_MS / 1000)

    def _persist(self):
        """Write-behind: relay levels, and the outbox while offline or an ack is overdue."""
        try:
            self.store.flush()
        except OSError as e:
            log("store", "flush failed: %s" % e)
        ob = self.outbox
        offline = not self.link_up.is_set()
        if ob.spill_path and ob.dirty and (self._spilled or offline or ob.overdue()):
            try:
                ob.spill()
                self._spilled = len(ob) > 0
            except OSError as e:
                log("outbox", "spill failed: %s" % e)

    def _lease(self, r):
        """A leased command route goes to its safe level when the cloud has been out of reach
        for its lease, or when the command that set it has run out of its window."""
        if r.value() == r.safe_level:
            return
        now = ticks_ms()
        why = None
        if r.valid_until is not None and ticks_diff(now, r.valid_until) >= 0:
            why = "the command's window has passed"
        elif self.link_down.is_set() and ticks_diff(now, self._down_since) >= r.lease_ms:
            why = "no cloud for %d s" % (r.lease_ms // 1000)
        if why:
            r.make_safe()
            r.valid_until = None
            log("relay", "%s: back to its safe level (%s)" % (r.name, why))
            self.report(r, r.value())  # a local change: sent once the cloud is back

    def apply(self, route, value):
        """Drive a command route; report every other route an interlock switched off."""
        before = [(r, r.value()) for r in self.routes.values() if r.kind == "command" and r is not route]
        route.apply(value)
        for r, v in before:
            if r.value() != v:
                log("relay", "%s: switched off by the interlock" % r.name)
                self.report(r, r.value())

    async def sender(self):
        while not self.stopping:
            if self.link_up.is_set() and self.cloud.catalog:
                limit = self.cloud.catalog.max_inflight
                for e in self.outbox.ready():
                    if len(self.mqtt.inflight) >= limit or not self.link_up.is_set():
                        break
                    topic = self._feed_topic(e.route)
                    if topic is None:
                        continue
                    r = self.routes.get(e.route)
                    log("publish", "%s %s%s" % (r.name if r else e.route, e.payload.decode(),
                                                " (again, try %d)" % (e.tries + 1) if e.tries else ""))
                    try:
                        await self.mqtt.publish(topic, e.payload, 1)
                    except OSError as err:
                        log("publish", "failed: %s" % _why(err))
                        break
                    self.outbox.sent(e)
            due = self.outbox.next_due_ms()
            wait = 1000 if due is None else max(20, min(due, 1000))
            self.work.clear()
            try:
                await wait_for_ms(self.work.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _feed_topic(self, rid):
        r = self.cloud.catalog.routes.get(rid)
        return r["feed"] if r else None

    # --- messages from the broker ------------------------------------------
    def _on_message(self, topic, payload):
        kind, route = self._topics.get(topic, (None, None))
        cat = self.cloud.catalog
        if kind and cat and len(payload) > cat.max_payload:
            # The catalog's max_payload_bytes holds both ways: refused before parsing, since
            # parsing a big message needs a big free block, which a small heap may not have.
            log(kind, "%s: refused message (%d bytes > max_payload_bytes %d)%s" % (
                route.name if route else "ack", len(payload), cat.max_payload,
                "; relay unchanged" if route else ""))
            return
        if kind == "ack":
            self._on_ack(payload)
        elif kind == "desired":
            gc.collect()  # a command is rare and may be big: parse it on a tidy heap
            self._on_desired(route, payload)
        else:
            log("mqtt", "message on unexpected topic %s ignored" % topic)

    def _on_ack(self, payload):
        try:
            mid, status, retryable, etype = realer.parse_ack(payload)
        except ValueError as err:
            log("ack", "unreadable ack ignored (%s)" % err)
            return
        e = self.outbox.ack(mid, status, retryable)
        if not self._healthy and status in ("accepted", "replayed"):
            self._healthy = True  # the cloud answers: the next boot is a normal one
            from firmware import boot
            boot.healthy(self.root)
            unload("firmware.boot")
        if e is None:
            log("ack", "%s for unknown message_id %s (already settled)" % (status, mid))
            return
        r = self.routes.get(e.route)
        if r:
            r.last_ack = status
        what = "retry later" if retryable and status not in ("accepted", "replayed") else (
            "delivered" if status in ("accepted", "replayed") else "dropped")
        log("ack", "%s %s message_id=%s%s -> %s" % (
            r.name if r else e.route, status, mid, " error=%s" % etype if etype else "", what))
        self.work.set()

    def _on_desired(self, route, payload):
        try:
            d = realer.parse_desired(payload)
        except ValueError as e:
            log("desired", "%s: refused message (%s); relay unchanged" % (route.name, e))
            return
        did, seq = d["desired_id"], d["sequence_number"]
        last = self.store.last_sequence(route.id)
        if seq <= last:
            log("desired", "%s: sequence %d <= last handled %d, ignored" % (route.name, seq, last))
            return
        now = ticks_ms()
        if did in self._seen:
            # A desired_id already answered, reused with a higher sequence: the cloud would
            # refuse a second answer, so applying it would move the relay behind its back.
            self._sequence(route, seq)
            log("desired", "%s: desired_id %s already answered; seq=%d refused, relay unchanged"
                % (route.name, did, seq))
            return
        seen = self._seen
        if len(seen) >= _SEEN_MAX:  # forget the oldest (dicts are unordered on MicroPython)
            seen.pop(min(seen, key=seen.get))
        self._nseen += 1
        seen[did] = self._nseen
        exp = d["expires_ms"]
        if exp is not None:
            self.cloud.published(exp - d["valid_for_seconds"] * 1000, now)
        server_now = self.cloud.server_now_ms()
        if server_now is not None and exp is not None and server_now > exp:
            status, value = "stale", route.value()
        else:
            try:
                value = route.check(d["value"])
                self.apply(route, value)
                if route.lease_ms:
                    route.valid_until = ticks_add(now, d["valid_for_seconds"] * 1000)
                status, value = "applied", route.value()
            except ValueError as e:
                log("desired", "%s: value %r refused (%s)" % (route.name, d["value"], e))
                status, value = "rejected", route.value()
        self._sequence(route, seq)
        self.report(route, value, did, status)
        log("desired", "%s seq=%d value=%s -> %s (now %s) desired_id=%s" % (
            route.name, seq, d["value"], status, value, did))

    def _sequence(self, route, seq):
        try:
            self.store.set_sequence(route.id, seq)
        except OSError as e:
            log("store", "sequence not saved: %s" % e)

    # --- the supervisor ----------------------------------------------------
    async def supervisor(self):
        """Bootstrap -> session -> run, and back. Each stage (token, catalog, credential,
        mqtt) backs off on its own, with full jitter; a session that came up resets them.
        Authentication failures (HTTP 401/403, CONNACK 4/5) open a circuit breaker after
        _BREAKER in a row: minutes between tries, never a tight loop on a revoked device."""
        cloud = self.cloud
        stages = {}
        self.auth_failures = 0
        while not self.stopping:
            retry_after = None
            try:
                self._stage = "HTTPS " + cloud.api
                stage = "token"  # the backoff a timeout or TLS failure counts against
                await cloud.ensure_token()
                if cloud.catalog is None:
                    stage = "catalog"
                    await cloud.fetch_catalog()
                    self._bind_catalog()
                if cloud.cred is None or not cloud.cred.usable(ticks_ms()):
                    stage = "credential"
                    await cloud.fetch_credential()
                stage = "mqtt"
                self._stage = "MQTT %s:%d" % (cloud.catalog.host, cloud.catalog.port)
                cloud.done()
                gc.collect()
                await self.session()
                continue
            except realer.CloudError as e:
                log("bootstrap", "%s" % e)
                stage, retry_after = e.stage, e.retry_after
                if e.auth:
                    cloud.forget_auth()
                    self.auth_failures += 1
            except _mqtt.MQTTRefused as e:
                log("mqtt", "CONNECT refused (code %d): asking for a new credential" % e.code)
                cloud.cred = None
                if e.code in (4, 5):  # bad user name or password / not authorised
                    self.auth_failures += 1
            except ValueError as e:  # MicroPython reports TLS failures as ValueError
                log("tls", "refused: %s (%s)" % (_why(e), self._stage))
            except MemoryError as e:  # a fragmented heap at a peak: tidy up and try again
                gc.collect()
                log("memory", "%s: %s (%s); free %d" % (stage, _why(e), self._stage, heap()[0]))
            except (OSError, EOFError) as e:
                log("link", "%s: %s (%s)" % (type(e).__name__, _why(e), self._stage))
            if self.link_up.is_set():  # the session had come up: every stage starts afresh
                stages = {}
            self._link(False)
            b = stages.get(stage)
            if b is None:
                b = stages[stage] = Backoff()
            delay = b.next_ms(retry_after)
            if self.auth_failures >= _BREAKER:
                hold = min(_BREAKER_CAP_MS, _BREAKER_MS << min(self.auth_failures - _BREAKER, 5))
                delay = max(delay, hold)
                log("supervisor", "circuit open: %d authentication failures in a row" % self.auth_failures)
            log("supervisor", "%s: retrying in %d.%01d s" % (stage, delay // 1000, delay % 1000 // 100))
            await asyncio.sleep(delay / 1000)

    def _bind_catalog(self):
        c = self.cloud.catalog
        self._topics = {c.ack_topic: ("ack", None)}
        for rid, route in self.routes.items():
            cr = c.routes.get(rid)
            if cr is None:
                log("catalog", "route %s (%s) is not in the catalog; not reported" % (route.name, rid))
                continue
            if route.kind == "command":
                # The driver decides the value type; the catalog's range can only narrow it.
                if cr.get("type") and cr["type"] != route.value_type:
                    log("catalog", "%s: the cloud says %s, the driver takes %s; the driver wins"
                        % (route.name, cr["type"], route.value_type))
                if route.value_type != "boolean":
                    lo, hi = cr.get("min"), cr.get("max")
                    if isinstance(lo, (int, float)) and (route.lo is None or lo > route.lo):
                        route.lo = lo
                    if isinstance(hi, (int, float)) and (route.hi is None or hi < route.hi):
                        route.hi = hi
                if cr.get("desired"):
                    self._topics[cr["desired"]] = ("desired", route)

    def _link(self, up):
        if up:
            self.link_down.clear()
            self.link_up.set()
        else:
            if not self.link_down.is_set():
                self._down_since = ticks_ms()
            self.link_up.clear()
            self.link_down.set()

    async def session(self):
        c, cred = self.cloud.catalog, self.cloud.cred
        reader, writer = await tls.open_tls(c.host, c.port, self.ctx)
        await self.mqtt.connect(reader, writer, cred.client_id, cred.username, cred.password)
        self.sessions += 1
        subs = self.cloud.subscriptions([r.id for r in self.routes.values() if r.kind == "command"])
        granted = await self.mqtt.subscribe(subs)
        for (topic, _), code in zip(subs, granted):
            if code == 0x80:
                log("mqtt", "subscription refused: %s" % topic)
        log("mqtt", "connected to %s:%d as %s; subscribed to %d topics" % (
            c.host, c.port, cred.username, len(subs)))
        # Unacked events go out again with their message_id; those still waiting
        # for a PUBACK are resent by the MQTT client itself, with DUP set.
        self.outbox.requeue([id(v[1]) for v in self.mqtt.inflight.values()])
        await self.mqtt.resend_inflight()
        self._link(True)
        self.auth_failures = 0
        self.work.set()
        while not self.stopping:
            if self.mqtt.down.is_set():
                raise OSError("link lost: %s" % (self.mqtt.reason,))
            if cred.renew_due(ticks_ms()):
                await self._renew()
                return
            await asyncio.sleep(_WATCH_MS / 1000)

    async def _renew(self):
        """Controlled reconnect: new tuple over HTTPS first, then swap the session."""
        log("renewal", "renew_after reached: requesting a new credential")
        try:
            await self.cloud.ensure_token()
            await self.cloud.fetch_credential()
        except (realer.CloudError, OSError, ValueError) as e:
            # Keep the current session; the supervisor tries again after it ends.
            log("renewal", "failed (%s); keeping the current session" % e)
            self.cloud.cred.renew_after = self.cloud.cred.expires_in
            return
        self._link(False)
        await self.mqtt.disconnect()
        log("renewal", "reconnecting with %s" % self.cloud.cred.username)
        self.cloud.done()

    async def watchdog(self, wdt):
        """Feed the hardware watchdog only while the loop runs: a stuck loop resets the board."""
        while not self.stopping:
            wdt.feed()
            await asyncio.sleep(1)

    async def run(self):
        # Each relay's level at boot (its safe level, or the restored one) goes to the cloud
        # as a local change: after a power cut the cloud's last command may say otherwise,
        # and its retained copy is not applied again (its sequence was handled).
        for r in self.routes.values():
            if r.kind == "command":
                self.report(r, r.value())
        from firmware.io import board
        tasks = [asyncio.create_task(self.sampler()), asyncio.create_task(self.sender())]
        wdt = board.watchdog(_WDT_MS)
        del board
        unload("firmware.io.board")
        if wdt is not None:
            tasks.append(asyncio.create_task(self.watchdog(wdt)))
        try:
            import aiorepl  # optional (mpremote mip install aiorepl): a REPL beside the gateway
            tasks.append(asyncio.create_task(aiorepl.task()))
        except ImportError:
            pass
        try:
            from firmware import boot
            if await boot.wifi(self.cfg.wifi_ssid, self.cfg.wifi_password) is not None:
                await boot.ntp()
            del boot
            unload("firmware.boot")
            unload("firmware.io.board")  # boot.wifi() used it
            await self.supervisor()
        finally:
            for t in tasks:
                t.cancel()

    async def shutdown(self, timeout_ms=5000):
        """Intentional shutdown: leave the broker, revoke the token (seed 001)."""
        self.stopping = True
        try:
            await self.mqtt.disconnect()
        except OSError:
            pass
        try:
            await wait_for_ms(self.cloud.revoke(), timeout_ms)
        except (realer.CloudError, OSError, ValueError, asyncio.TimeoutError) as e:
            log("shutdown", "revoke failed: %s" % e)
        self._spilled = True  # leaving: keep what is not acknowledged
        self._persist()
