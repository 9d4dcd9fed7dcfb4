# ugate boot: kept tiny on purpose. Safe mode, the crash counter, WiFi and NTP live in
# firmware/boot.py and run from main.py's asyncio program (WiFi with backoff, NTP before
# any TLS), so a slow network never holds the board in boot.py and nothing here can fail.
