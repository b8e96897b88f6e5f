"""phonevault.sync.emulator: a simulated iPhone speaking usbmuxd, lockdownd (TLS) and MobileBackup2 on loopback.

Layers, one module each: `wire` (framing), `usbmux`, `lockdown`, `pairing`, `services` (notification_proxy,
afc, installation_proxy, springboardservices), `devicelink`, `backup2`, `device` (identity, content, ports),
`server` (listener, threads, the public `Emulator`), and `hostile` (the same phone breaking each protocol on
purpose, chosen with `Fault(hostile=...)`, for tests of the host side).

What the phone holds is the synthetic phone, `phone.SyntheticPhone`, built from `seeds`, `identity`, `days` (which
files exist on day N), `content` and `databases` (their bytes) and `folder` (the MobileSync folder writer); iOS
backup encryption is the product's own `phonevault.sync.ioscrypto`, which the host uses to read what the phone wrote. It is test rig, not product: no product module imports this package.
"""

from .backup2 import Report
from .device import Fault
from .server import Emulator, serve

__all__ = ["Emulator", "Fault", "Report", "serve"]
