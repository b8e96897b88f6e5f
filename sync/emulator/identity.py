"""Who a synthetic phone is: its UDID and the lockdownd values a real iPhone of its model and iOS answers.

Invariant: a pure function of the seed (labels "udid", "identity", "lockdown"); the IMEI carries a valid Luhn
check digit, the UDID is 40 lowercase hex digits like a pre-2018 device's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phonevault.sync.plists import DeviceInfo

from .seeds import NAMES, derive, rng

PROFILES = (  # ProductType, HardwareModel, HardwarePlatform, ChipID, ModelNumber
    ("iPhone15,2", "D73AP", "t8120", 0x8120, "MQ0G3"),
    ("iPhone14,5", "D17AP", "t8110", 0x8110, "MLPF3"),
    ("iPhone16,1", "D83AP", "t8130", 0x8130, "MTUW3"),
    ("iPhone12,1", "N104AP", "t8030", 0x8030, "MWLT2"),
)
#: ProductType → the name its camera writes in EXIF Model.
MODEL_NAMES = {
    "iPhone15,2": "iPhone 14 Pro",
    "iPhone14,5": "iPhone 13",
    "iPhone16,1": "iPhone 15 Pro",
    "iPhone12,1": "iPhone 11",
}
IOS = (("17.5.1", "21F90"), ("17.4.1", "21E236"), ("17.6.1", "21G93"), ("16.7.8", "20H343"))


@dataclass(frozen=True, slots=True)
class Identity:
    """The model, iOS release and owner drawn for a seed."""

    seed: int
    udid: str
    profile: tuple[str, str, str, int, str]
    ios: tuple[str, str]
    owner: str

    @classmethod
    def of(cls, seed: int) -> Identity:
        r = rng(seed, "identity")
        profile = PROFILES[r.randrange(len(PROFILES))]
        ios = IOS[r.randrange(len(IOS))]
        return cls(seed, derive(seed, "udid").hex()[:40], profile, ios, NAMES[r.randrange(len(NAMES))])

    @property
    def model_name(self) -> str:
        return MODEL_NAMES[self.profile[0]]

    def lockdown_values(self) -> dict[str, Any]:
        """lockdownd's root dict (GetValue without Domain/Key), as a real iPhone answers it."""
        r = rng(self.seed, "lockdown")
        product_type, hw_model, platform, chip_id, model_number = self.profile
        version, build = self.ios
        alnum = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        imei14 = "35" + "".join(r.choice("0123456789") for _ in range(12))
        mac = lambda: ":".join(f"{r.randrange(256):02x}" for _ in range(6))  # noqa: E731
        # The dict is built in this order on purpose: each value draws from `r` in turn.
        return {
            "ActivationState": "Activated",
            "BasebandVersion": f"{r.randint(1, 5)}.{r.randint(0, 60):02d}.{r.randint(0, 9):02d}",
            "BluetoothAddress": mac(),
            "BoardId": r.randrange(2, 16, 2),
            "BuildVersion": build,
            "CPUArchitecture": "arm64e",
            "ChipID": chip_id,
            "DeviceClass": "iPhone",
            "DeviceColor": "1",
            "DeviceName": f"{self.owner}’s iPhone",
            "DieID": r.getrandbits(63),
            "EthernetAddress": mac(),
            "FirmwareVersion": f"iBoot-{r.randint(8400, 10200)}.{r.randint(0, 140)}.{r.randint(0, 9)}",
            "HardwareModel": hw_model,
            "HardwarePlatform": platform,
            "HostAttached": True,
            "IntegratedCircuitCardIdentity": "8901" + "".join(r.choice("0123456789") for _ in range(15)),
            "InternationalMobileEquipmentIdentity": imei14 + _luhn(imei14),
            "MobileEquipmentIdentifier": imei14,
            "ModelNumber": model_number,
            "PasswordProtected": True,
            "PhoneNumber": f"+1 ({r.randint(201, 989)}) 555-{r.randint(100, 199):04d}",
            "ProductName": "iPhone OS",
            "ProductType": product_type,
            "ProductVersion": version,
            "ProtocolVersion": "2",
            "RegionInfo": "LL/A",
            "SIMStatus": "kCTSIMSupportSIMStatusReady",
            "SerialNumber": "".join(r.choice(alnum) for _ in range(12)),
            "TelephonyCapability": True,
            "TimeZone": "America/Los_Angeles",
            "TimeZoneOffsetFromUTC": -25200.0,
            "UniqueChipID": r.getrandbits(52),
            "UniqueDeviceID": self.udid,
            "Uses24HourClock": False,
            "WiFiAddress": mac(),
        }

    def device_info(self) -> DeviceInfo:
        v = self.lockdown_values()
        return DeviceInfo(
            udid=v["UniqueDeviceID"],
            name=v["DeviceName"],
            product_type=v["ProductType"],
            ios_version=v["ProductVersion"],
            build=v["BuildVersion"],
            serial=v["SerialNumber"],
            imei=v["InternationalMobileEquipmentIdentity"],
            meid=v["MobileEquipmentIdentifier"],
            phone_number=v["PhoneNumber"],
            iccid=v["IntegratedCircuitCardIdentity"],
        )


def _luhn(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return str((10 - total % 10) % 10)
