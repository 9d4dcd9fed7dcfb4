"""net: the only code that touches sockets. TLS context, HTTPS client, MQTT client."""
