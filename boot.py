# ugate boot: kept tiny. WiFi, NTP and safe mode arrive with the hardware issue (4);
# on the unix port there is nothing to do here.
