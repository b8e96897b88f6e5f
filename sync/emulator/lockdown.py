"""The emulator's lockdownd (device port 62078): values, sessions with a real TLS upgrade, StartService.

Room: lockdownd. Invariant: every reply names the `Request` it answers (pmd3 `_verify_request_response`
raises otherwise) and carries either the result or an `Error` string from the set pmd3 and lid map to
exceptions; a session is only opened for the HostID of the provisioned pair record, and its TLS runs on the
same socket right after the plaintext StartSession reply (host = TLS client, device = TLS server).
"""

from __future__ import annotations

import logging
import ssl
import uuid
from typing import Any, Protocol

from . import hostile
from .pairing import Pairing
from .wire import FrameError, Link, PeerClosed, recv_plist, send_plist

log = logging.getLogger(__name__)

# Requests carry a pair record at most (a few KiB); a bigger frame is garbage, not a lockdownd request.
MAX_REQUEST = 1 * 2**20


class LockdownDevice(Protocol):
    pairing: Pairing
    tls: ssl.SSLContext

    def lockdown_values(self) -> dict[str, Any]: ...

    def start_service(self, name: str) -> tuple[int, bool] | None:
        """Open a one-shot port for service `name`: (port, EnableServiceSSL), or None if unknown."""
        ...


def lookup(values: dict[str, Any], domain: str | None, key: str | None) -> Any:
    """GetValue semantics: root dict, a domain dict, a key of the root, or a key of a domain; None = missing.

    Domains are nested dicts of the root (pmd3 reads `com.apple.iTunes` and `com.apple.mobile.iTunes` from
    the root dict itself, `init_mobile_backup_factory_info`), so one dict answers both kinds of lookup.
    """
    scope: Any = values
    if domain:
        scope = values.get(domain)
        if not isinstance(scope, dict):
            return None
    if key:
        return scope.get(key)
    return scope


def serve(link: Link, device: LockdownDevice) -> None:
    """Answer lockdownd requests on `link` until the host closes it."""
    session: str | None = None
    while True:
        try:
            request = recv_plist(link.sock, "lockdown", MAX_REQUEST)
        except FrameError as e:
            if not (isinstance(e, PeerClosed) and e.clean):
                log.warning("lockdown %s: %s; closing the connection", link.peer, e.reason)
            return
        except (ssl.SSLError, OSError) as e:
            log.warning("lockdown %s: %s; closing the connection", link.peer, e)
            return
        if not isinstance(request, dict) or not isinstance(request.get("Request"), str):
            log.warning("lockdown %s: not a lockdownd request (%s); closing", link.peer, type(request).__name__)
            return
        if hostile.lockdown(link, device, request):
            return
        name = request["Request"]
        reply: dict[str, Any] = {"Request": name}
        upgrade = downgrade = False
        if name == "QueryType":
            reply["Type"] = "com.apple.mobile.lockdown"
        elif name == "GetValue":
            domain, key = request.get("Domain"), request.get("Key")
            value = lookup(device.lockdown_values(), domain, key)
            reply.update({k: v for k, v in (("Domain", domain), ("Key", key)) if v})
            if value is None:
                reply["Error"] = "MissingValue"
            else:
                reply["Value"] = value
        elif name in ("ValidatePair", "StartSession"):
            record = request.get("PairRecord")
            host_id = request.get("HostID") or (record.get("HostID") if isinstance(record, dict) else None)
            if host_id != device.pairing.host_id:
                # pmd3 `validate_pairing` treats InvalidHostID as "not paired" and would try to pair.
                reply["Error"] = "InvalidHostID"
            elif name == "StartSession":
                if session is not None:
                    reply["Error"] = "SessionActive"
                else:
                    session = str(uuid.uuid4()).upper()
                    reply.update({"SessionID": session, "EnableSessionSSL": True})
                    upgrade = True
        elif name == "StopSession":
            if session is None or request.get("SessionID") != session:
                reply["Error"] = "InvalidSessionID"
            else:
                # pmd3 `stop_session` raises CannotStopSessionError unless Result is "Success".
                reply["Result"] = "Success"
                session = None
                downgrade = True
        elif name == "StartService":
            reply.update(_start_service(device, request, session))
        elif name == "Goodbye":
            # lid `lockdownd_client_free` says Goodbye before closing.
            reply["Result"] = "Success"
        elif name in ("SetValue", "RemoveValue"):
            reply["Error"] = "SetProhibited"
        else:
            log.info("lockdown %s: unsupported request %r", link.peer, name)
            reply["Error"] = "InvalidRequest"
        try:
            send_plist(link.sock, reply)
            if upgrade:
                link.start_tls(device.tls)
            elif downgrade:
                _end_tls(link)
        except (ssl.SSLError, OSError) as e:
            log.warning("lockdown %s: %s failed: %s; closing the connection", link.peer, name, e)
            return
        if name == "Goodbye":
            return


def _start_service(device: LockdownDevice, request: dict[str, Any], session: str | None) -> dict[str, Any]:
    name = request.get("Service")
    if session is None:
        # Services need a paired session; pmd3 only asks after validate_pairing succeeded.
        return {"Service": name, "Error": "InvalidService"}
    opened = device.start_service(name) if isinstance(name, str) else None
    if opened is None:
        return {"Service": name, "Error": "InvalidService"}
    port, use_ssl = opened
    return {"Service": name, "Port": port, "EnableServiceSSL": use_ssl}


def _end_tls(link: Link) -> None:
    """After StopSession the session's TLS ends and the socket carries plaintext again (lid
    `lockdownd_stop_session` → `idevice_connection_disable_ssl` sends close_notify and keeps the socket)."""
    if isinstance(link.sock, ssl.SSLSocket):
        link.sock.settimeout(5.0)
        link.sock = link.sock.unwrap()
        link.sock.settimeout(None)
