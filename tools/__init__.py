"""Host-side tools for ugate: the local cloud emulators, build, flash and provisioning."""
