# ugate: runs after boot.py. All the work is in the firmware package.
import firmware.app

firmware.app.main()
