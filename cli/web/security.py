"""The web view's gate: every request passes here before any route, static files included.

Rules, in order:
1. Host: the request's Host header must name the address served (127.0.0.1, localhost or [::1] with the port, or
   the --host given; on 0.0.0.0 or ::, also this machine's host name and any IP literal). Anything else is 403: a
   page on another site that rebinds its DNS name to 127.0.0.1 sends its own name as Host, so it is refused before
   the token is even looked at.
2. Method: GET and HEAD only (405 otherwise). Nothing in the web view changes the vault, which is opened
   read-only besides.
3. Token, as Jupyter does it: the URL printed at start carries `?token=…`; a request with the right token gets a
   cookie (HttpOnly, SameSite=Strict, scoped to this port's name) and a redirect to the same URL without the token,
   so the token leaves the address bar and the history. Later requests carry the cookie; scripts may send
   `Authorization: token …` instead. Anything else is 403. Tokens are compared with hmac.compare_digest.
4. Headers on every response: a Content-Security-Policy allowing only this origin (no inline script, no
   third-party request of any kind, no framing), no Referer, nosniff, and no caching unless a route says so.
The vault password is never taken from or put in a URL: the server asks for it at start, as every command does.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; media-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
FORBIDDEN = (
    b"403 Forbidden: open the address phonevault serve printed (it carries the access token), "
    b"or send 'Authorization: token ...'.\n"
)


def cookie_name(port: int) -> str:
    return f"phonevault-token-{port}"


WILDCARDS = ("0.0.0.0", "::", "[::]")


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """Host header values this server answers to. Listening on every address (0.0.0.0, ::), the names it may be
    reached by cannot be known: this machine's host names and loopback here, and any IP literal (`ip_literals`)."""
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1", *WILDCARDS):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if host in WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    names = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
    return frozenset(f"{n}:{port}" for n in names) | (frozenset(names) if port == 80 else frozenset())


def ip_literal(host_header: str, port: int) -> bool:
    """`host_header` is an IP address (with this port): no DNS name, so no DNS rebinding through it."""
    name, sep, given = host_header.rpartition(":")
    if not sep or given != str(port):
        name = host_header if port == 80 else ""
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


class Gate:
    """ASGI middleware enforcing the module docstring's rules around `app`."""

    def __init__(
        self, app: ASGIApp, *, token: str, hosts: frozenset[str], cookie: str, port: int = 0, ip_literals: bool = False
    ) -> None:
        self.app = app
        self.port = port
        self.ip_literals = ip_literals  # listening on every address: any IP literal is a name of this server
        self.token = token.encode()
        self.hosts = hosts
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        if host not in self.hosts and not (self.ip_literals and ip_literal(host, self.port)):
            await _plain(send, 403, b"403 Forbidden: unexpected Host header.\n")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"405 Method Not Allowed: the web view only reads.\n", [(b"allow", b"GET, HEAD")])
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given:
            if not self._ok(given[0]):
                await _plain(send, 403, FORBIDDEN)
                return
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            # Only ever a path on this server: "//host" would be read by the browser as another site.
            location = "/" + quote(scope["path"]).lstrip("/") + (f"?{rest}" if rest else "")
            cookie = f"{self.cookie}={given[0]}; Path=/; HttpOnly; SameSite=Strict"
            await _plain(send, 303, b"", [(b"location", location.encode()), (b"set-cookie", cookie.encode())])
            return
        if not (self._ok(_bearer(headers.get("authorization", ""))) or self._ok(_cookie(headers, self.cookie))):
            await _plain(send, 403, FORBIDDEN)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                if b"cache-control" not in have:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, with_headers)

    def _ok(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self.token)


def _bearer(value: str) -> str | None:
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() in ("token", "bearer") else None


def _cookie(headers: dict[str, str], name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw:
        return None
    try:
        jar = SimpleCookie(raw)
    except Exception:  # a malformed cookie header is no token
        return None
    return jar[name].value if name in jar else None


async def _plain(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *SECURITY_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
