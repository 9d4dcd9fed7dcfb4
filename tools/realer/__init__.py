"""tools.realer: the local Realer cloud (seed 001), built of real parts.

mosquitto with TLS and dynamic-security ACLs, an HTTPS API (Starlette on
uvicorn), an application service that acks feed data and publishes desired
state, and a SQLite ledger. Start it with ``./deploy.sh cloud``.
"""
