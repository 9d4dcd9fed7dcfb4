"""io: pins and drivers. Only firmware/io/board.py (issue 4) imports machine/network/esp32.

Drivers receive their pin or file objects from outside, so tests hand them fakes.
"""
