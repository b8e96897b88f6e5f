"""phonevault.sync.emulator: a simulated iPhone speaking usbmuxd, lockdownd (TLS) and MobileBackup2 on loopback.

Layers, one module each: `wire` (framing), `usbmux`, `lockdown`, `pairing`, `services` (notification_proxy,
afc, installation_proxy, springboardservices), `devicelink`, `backup2`, `device` (identity, content, ports),
`server` (listener, threads, the public `Emulator`).
"""

from .backup2 import Report
from .device import Fault
from .server import Emulator, serve

__all__ = ["Emulator", "Fault", "Report", "serve"]
