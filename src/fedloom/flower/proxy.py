"""The public face of ``fedloom server``: a reverse proxy that lets clients reach Flower's Fleet API and nothing else.

flwr 1.42's SuperLink serves three HTTP APIs on its one port: **Fleet** (``/v1/fleet/...``, what SuperNodes
call), **Control** (``/v1/control/...``: submit, list and stop runs; the open-source SuperLink authenticates
no caller) and **Runtime** (``/v1/runtime/...``, what the ServerApp calls). Exposed as it is, anyone who
reaches the port can ``flwr run`` their own ServerApp on the server machine. So ``fedloom server`` binds the
SuperLink to ``127.0.0.1`` on a private port and puts this proxy on the public ``--address``:

- a ``POST`` to one of :data:`FLEET_PATHS` (the routes of ``flwr/superlink/routers/fleet/router.py``) is
  forwarded to the SuperLink, headers and body unchanged; anything else is answered ``404`` without
  touching the SuperLink (Control, Runtime, FastAPI's ``/docs``, other methods);
- with a client registry, a Fleet request that does not carry one of the registered public keys in Flower's
  ``flwr-public-key`` header is answered ``401`` here and reported once per key (``on_refuse``); the
  SuperLink then checks the request's signature itself (``--enable-supernode-auth``);
- TLS ends here when the server has a certificate (``--tls-dir``); the hop to the SuperLink stays on
  loopback.

The proxy is a plain ASGI app served by uvicorn in a thread of ``fedloom server``, forwarding with
``httpx`` (both are flwr dependencies).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from .identity import Registry

__all__ = ["FLEET_PATHS", "FleetProxy", "ProxyServer"]

FLEET_PATHS = frozenset(
    f"/v1/fleet/{name}"
    for name in (
        "register-node",
        "activate-node",
        "deactivate-node",
        "unregister-node",
        "send-node-heartbeat",
        "pull-messages",
        "push-messages",
        "get-run",
        "get-fab",
        "push-object",
        "pull-object",
        "confirm-message-received",
    )
)
_PUBLIC_KEY_HEADER = "flwr-public-key"  # flwr.supercore.constant.FLEET_HTTP_PUBLIC_KEY_HEADER
# hop-by-hop headers (RFC 9110 section 7.6.1) and those httpx / uvicorn set themselves
_DROP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "trailer"}
_DROP |= {"proxy-connection", "proxy-authorization", "proxy-authenticate"}


class FleetProxy:
    """ASGI app: forward Fleet API calls to ``upstream``, refuse the rest."""

    def __init__(
        self,
        upstream: str,
        verify: ssl.SSLContext | bool = False,
        registry: Registry | None = None,
        on_refuse: Callable[[str, str], None] | None = None,
    ):
        self.upstream, self.verify, self.registry = upstream, verify, registry
        self.on_refuse = on_refuse or (lambda key, line: None)
        self.client: httpx.AsyncClient | None = None
        self.refused_keys: dict[str, int] = {}  # key fingerprint -> refused requests
        self.forwarded = self.blocked = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
                self.client = httpx.AsyncClient(base_url=self.upstream, verify=self.verify, timeout=120, limits=limits)
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _key_refusal(self, headers: dict[str, str], peer: str) -> str:
        """Why a request's client key is not admitted ("" when it is, or when there is no registry)."""
        if self.registry is None:
            return ""
        value = headers.get(_PUBLIC_KEY_HEADER)
        if value is None:
            key, why = "none", "carries no client key (start the client with --key FILE)"
        else:
            try:
                pem = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                pem = b""
            if self.registry.client_of(pem) is not None:
                return ""
            key = hashlib.sha256(pem).hexdigest()[:16]
            why = f"uses a key (sha256 {key}) that is not in the server's client registry"
        self.refused_keys[key] = self.refused_keys.get(key, 0) + 1
        if self.refused_keys[key] == 1:  # one line per key, not one per request
            self.on_refuse(key, f"refused a SuperNode from {peer}: it {why}")
        return why

    async def _http(self, scope, receive, send) -> None:
        path, method = scope["path"], scope["method"]
        if method != "POST" or path not in FLEET_PATHS:
            self.blocked += 1
            await _respond(send, 404, b"not found: this address serves the Flower Fleet API only\n")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        peer = "{}:{}".format(*scope["client"]) if scope.get("client") else "?"
        why = self._key_refusal(headers, peer)
        if why:
            await _respond(send, 401, f"unauthorized: this client {why}\n".encode())
            return
        body = bytearray()
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        forward = {k: v for k, v in headers.items() if k not in _DROP}
        try:
            r = await self.client.post(path, content=bytes(body), headers=forward)
        except httpx.HTTPError:
            await _respond(send, 502, b"the SuperLink behind this proxy is not reachable\n")
            return
        self.forwarded += 1
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.items() if k.lower() not in _DROP]
        out = [h for h in out if h[0].lower() != b"content-encoding"]  # httpx has decoded the body
        await _respond(send, r.status_code, r.content, out)


async def _respond(send, status: int, body: bytes, headers: list | None = None) -> None:
    headers = list(headers if headers is not None else [(b"content-type", b"text/plain; charset=utf-8")])
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ProxyServer:
    """Serve a :class:`FleetProxy` on ``host:port`` from a thread (TLS when ``certfile``/``keyfile`` given)."""

    def __init__(
        self, app: FleetProxy, host: str, port: int, certfile: Path | None = None, keyfile: Path | None = None
    ):
        import uvicorn

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            ssl_certfile=str(certfile) if certfile else None,
            ssl_keyfile=str(keyfile) if keyfile else None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=60,  # SuperNodes pull every few seconds: keep their connections
        )
        self.app, self.server = app, uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fedloom-proxy", daemon=True)

    def start(self, timeout: float = 20.0) -> bool:
        """Start serving; whether it listens within ``timeout`` seconds."""
        self.thread.start()
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.thread.is_alive():
            if self.server.started:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5.0)
