"""ugate: MicroPython firmware for ESP32 IoT gateways.

Layers (top to bottom): routes -> outbox -> cloud/<dialect> -> session -> net;
store and config beside them. See the README's architecture section.
"""
VERSION = "0.1.0"
