"""The emulated device's pairing: one pre-provisioned pair record and the TLS contexts built from it.

Room: pairing. Invariant: the record is generated once per data dir with real X.509 certificates
(`pymobiledevice3.ca.generate_pairing_cert_chain`, RSA-2048, `cryptography`) and then reused, so the
HostID a client read from usbmuxd yesterday still opens a session today. Nothing here is hand-rolled
crypto: certificates come from `cryptography`, TLS from the standard `ssl` module.

The host half (HostID, SystemBUID, Host/Root certificate and key, DeviceCertificate, EscrowBag) is what
usbmuxd serves to `ReadPairRecord`, so a client needs no pair record on disk (pmd3
`pair_records.get_preferred_pair_record` asks usbmuxd first; lid asks only usbmuxd). Certificates and keys
travel as `<data>` holding PEM: pmd3 `LockdownClient.ssl_file` concatenates them as bytes and crashes on
strings. The device key never leaves the data dir.
"""

from __future__ import annotations

import os
import plistlib
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pymobiledevice3.ca import generate_pairing_cert_chain

PAIRING_FILE = "pairing.plist"
PAIRING_FORMAT_VERSION = 2


@dataclass(frozen=True, slots=True)
class Pairing:
    host_id: str
    system_buid: str
    host_certificate: bytes
    host_private_key: bytes
    root_certificate: bytes
    root_private_key: bytes
    device_certificate: bytes
    device_private_key: bytes
    device_public_key: bytes  # PKCS#1 "RSA PUBLIC KEY" PEM, as lockdownd's DevicePublicKey value
    escrow_bag: bytes

    def host_record(self, wifi_mac_address: str) -> dict[str, Any]:
        """The pair record a host keeps (what usbmuxd's ReadPairRecord returns, serialized as a plist)."""
        return {
            "HostID": self.host_id,
            "SystemBUID": self.system_buid,
            "HostCertificate": self.host_certificate,
            "HostPrivateKey": self.host_private_key,
            "RootCertificate": self.root_certificate,
            "RootPrivateKey": self.root_private_key,
            "DeviceCertificate": self.device_certificate,
            "EscrowBag": self.escrow_bag,
            "WiFiMACAddress": wifi_mac_address,
        }


def load_or_create(data_dir: Path) -> Pairing:
    """Read `data_dir/pairing.plist`, or provision a new device key + pair record and store it there."""
    path = data_dir / PAIRING_FILE
    if path.exists():
        stored = plistlib.loads(path.read_bytes())
        if stored.get("FormatVersion") == PAIRING_FORMAT_VERSION:
            return Pairing(**{field: stored[field] for field in Pairing.__dataclass_fields__})
    pairing = _provision()
    record = {field: getattr(pairing, field) for field in Pairing.__dataclass_fields__}
    record["FormatVersion"] = PAIRING_FORMAT_VERSION
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(plistlib.dumps(record))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return pairing


def _provision() -> Pairing:
    device_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    device_public = device_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    host_cert, host_key, device_cert, root_cert, root_key = generate_pairing_cert_chain(
        device_public, device_version="17.0"
    )
    return Pairing(
        host_id=str(uuid.uuid4()).upper(),
        system_buid=str(uuid.uuid4()).upper(),
        host_certificate=host_cert,
        host_private_key=host_key,
        root_certificate=root_cert,
        root_private_key=root_key,
        device_certificate=device_cert,
        device_private_key=device_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        device_public_key=device_public,
        # A real EscrowBag is an opaque keybag; hosts only echo it back in StartService.
        escrow_bag=os.urandom(64),
    )


def server_context(pairing: Pairing, state_dir: Path) -> ssl.SSLContext:
    """TLS server context for lockdownd sessions and SSL services: the device certificate, as iOS does.

    Hosts never verify the device certificate (pmd3 `create_ssl_context`: CERT_NONE; lid accepts any), and
    the device does not demand a client certificate from us either. pmd3 offers TLS 1.2–1.3 with
    `@SECLEVEL=0`; lid falls back to TLS 1.0 only for ProductVersion < 10, so 1.2+ serves both.
    """
    # `load_cert_chain` only reads files; rewritten each start so it always matches pairing.plist.
    pem = state_dir / "device-tls.pem"
    tmp = pem.with_suffix(".tmp")
    tmp.write_bytes(pairing.device_certificate + b"\n" + pairing.device_private_key)
    os.chmod(tmp, 0o600)
    os.replace(tmp, pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(pem)
    return context
