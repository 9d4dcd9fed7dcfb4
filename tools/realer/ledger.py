"""The ledger: everything the local Realer cloud received and decided, in SQLite.

Tests open the same file read-only to prove that nothing was lost or applied
twice. One connection, guarded by a lock: the API (asyncio) and the MQTT
application service (paho's thread) both write.

Tables
  received     every feed-data publish, with the decision (status, error type)
  effects      one row per message_id that took effect (accepted); a replay adds none
  desired      every desired-state message published, and the command ack that answered it
  tokens       OAuth access tokens issued (SHA-256 of the token, never the token)
  credentials  MQTT credentials issued, and when/why they were removed
  events       broker restarts, kicks, fault knobs
"""
import hashlib
import json
import sqlite3
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
  id INTEGER PRIMARY KEY, at REAL NOT NULL, device_id INTEGER, route_id TEXT, topic TEXT,
  message_id TEXT, desired_id TEXT, payload BLOB, status TEXT NOT NULL, retryable INTEGER,
  error_type TEXT, sequence_number INTEGER);
CREATE TABLE IF NOT EXISTS effects (
  device_id INTEGER NOT NULL, message_id TEXT NOT NULL, route_id TEXT NOT NULL,
  digest TEXT NOT NULL, value TEXT, value_received_at TEXT, desired_id TEXT,
  report_status TEXT, sequence_number INTEGER NOT NULL, at REAL NOT NULL,
  PRIMARY KEY (device_id, message_id));
CREATE TABLE IF NOT EXISTS desired (
  desired_id TEXT PRIMARY KEY, device_id INTEGER NOT NULL, route_id TEXT NOT NULL,
  sequence_number INTEGER NOT NULL, value TEXT, valid_for_seconds INTEGER, expires_at TEXT,
  published_at REAL NOT NULL, raw INTEGER NOT NULL DEFAULT 0,
  ack_status TEXT, ack_message_id TEXT, ack_value TEXT, acked_at REAL);
CREATE TABLE IF NOT EXISTS tokens (
  token_sha256 TEXT PRIMARY KEY, client_id TEXT NOT NULL, device_id INTEGER NOT NULL,
  scopes TEXT NOT NULL, issued_at REAL NOT NULL, expires_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS credentials (
  username TEXT PRIMARY KEY, device_id INTEGER NOT NULL, client_id TEXT NOT NULL,
  scopes TEXT NOT NULL, token_sha256 TEXT NOT NULL, issued_at REAL NOT NULL,
  expires_at REAL NOT NULL, hard_expires_at REAL NOT NULL, removed_at REAL, removed_why TEXT);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL,
  detail TEXT);
"""


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


class Ledger:
    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self):
        with self._lock:
            self._db.close()

    def _run(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args)

    def one(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def all(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def event(self, kind, **detail):
        self._run("INSERT INTO events (at, kind, detail) VALUES (?,?,?)",
                  (time.time(), kind, json.dumps(detail, sort_keys=True)))

    # --- feed data -------------------------------------------------------
    def next_feed_sequence(self, device_id):
        row = self.one("SELECT MAX(sequence_number) FROM received WHERE device_id=?", (device_id,))
        return (row[0] or 0) + 1

    def effect(self, device_id, message_id):
        return self.one("SELECT route_id, digest, sequence_number FROM effects "
                        "WHERE device_id=? AND message_id=?", (device_id, message_id))

    def decide(self, device_id, route_id, topic, payload, ack, effect=None):
        """Record one decision atomically: the received row and, when accepted, its effect.

        `effect` is a dict with digest, value, value_received_at, desired_id, report_status.
        The server sequence number is assigned here, under the lock, so it is strictly
        increasing per device.
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT MAX(sequence_number) FROM received WHERE device_id=?",
                                 (device_id,)).fetchone()
                seq = (row[0] or 0) + 1
                ack["sequence_number"] = seq
                err = ack.get("error") or {}
                db.execute(
                    "INSERT INTO received (at, device_id, route_id, topic, message_id, desired_id,"
                    " payload, status, retryable, error_type, sequence_number)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (time.time(), device_id, route_id, topic, ack.get("message_id"),
                     ack.get("desired_id"), payload, ack["status"], int(ack["retryable"]),
                     err.get("type"), seq))
                if effect is not None:
                    db.execute(
                        "INSERT INTO effects (device_id, message_id, route_id, digest, value,"
                        " value_received_at, desired_id, report_status, sequence_number, at)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (device_id, ack["message_id"], route_id, effect["digest"],
                         json.dumps(effect["value"]), effect["value_received_at"],
                         effect.get("desired_id"), effect.get("report_status"), seq, time.time()))
                    if effect.get("desired_id"):
                        db.execute(
                            "UPDATE desired SET ack_status=?, ack_message_id=?, ack_value=?, acked_at=?"
                            " WHERE desired_id=?",
                            (effect.get("report_status") or "applied", ack["message_id"],
                             json.dumps(effect["value"]), time.time(), effect["desired_id"]))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return seq

    # --- desired state ---------------------------------------------------
    def add_desired(self, desired_id, device_id, route_id, value, valid_for, expires_at,
                    sequence_number=None, raw=False):
        """Store a desired-state message; assign the next sequence number for the route."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if sequence_number is None:
                    row = db.execute("SELECT MAX(sequence_number) FROM desired WHERE device_id=?"
                                     " AND route_id=?", (device_id, route_id)).fetchone()
                    sequence_number = (row[0] or 0) + 1
                db.execute(
                    "INSERT INTO desired (desired_id, device_id, route_id, sequence_number, value,"
                    " valid_for_seconds, expires_at, published_at, raw) VALUES (?,?,?,?,?,?,?,?,?)",
                    (desired_id, device_id, route_id, sequence_number, json.dumps(value),
                     valid_for, expires_at, time.time(), int(raw)))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return sequence_number

    def desired(self, desired_id):
        return self.one("SELECT device_id, route_id, value, ack_status, ack_message_id FROM desired"
                        " WHERE desired_id=?", (desired_id,))

    # --- tokens and credentials -----------------------------------------
    def add_token(self, token, client_id, device_id, scopes, expires_in):
        now = time.time()
        self._run("INSERT INTO tokens VALUES (?,?,?,?,?,?,NULL)",
                  (token_hash(token), client_id, device_id, " ".join(scopes), now, now + expires_in))

    def token(self, token):
        """(client_id, device_id, scopes list, expires_at, revoked_at) or None."""
        row = self.one("SELECT client_id, device_id, scopes, expires_at, revoked_at FROM tokens"
                       " WHERE token_sha256=?", (token_hash(token),))
        if row is None:
            return None
        return row[0], row[1], row[2].split(), row[3], row[4]

    def revoke_token(self, token):
        self._run("UPDATE tokens SET revoked_at=? WHERE token_sha256=? AND revoked_at IS NULL",
                  (time.time(), token_hash(token)))

    def add_credential(self, username, device_id, client_id, scopes, token, expires_in, hard_in):
        now = time.time()
        self._run("INSERT INTO credentials VALUES (?,?,?,?,?,?,?,?,NULL,NULL)",
                  (username, device_id, client_id, " ".join(scopes), token_hash(token), now,
                   now + expires_in, now + hard_in))

    def credential_count(self, device_id):
        return self.one("SELECT COUNT(*) FROM credentials WHERE device_id=?", (device_id,))[0]

    def due_credentials(self, now):
        return [r[0] for r in self.all("SELECT username FROM credentials WHERE removed_at IS NULL"
                                       " AND hard_expires_at<=?", (now,))]

    def credentials_of_token(self, token):
        return [r[0] for r in self.all("SELECT username FROM credentials WHERE removed_at IS NULL"
                                       " AND token_sha256=?", (token_hash(token),))]

    def live_credentials(self):
        return [r[0] for r in self.all("SELECT username FROM credentials WHERE removed_at IS NULL")]

    def remove_credential(self, username, why):
        self._run("UPDATE credentials SET removed_at=?, removed_why=? WHERE username=?"
                  " AND removed_at IS NULL", (time.time(), why, username))
