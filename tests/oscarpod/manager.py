"""A stand-in for OSCAR's manager in front of one pod: `POST /run/<service>` is
authenticated as grycap/oscar pkg/handlers/run.go does (`Authorization: Bearer`;
64 characters: the service's token; anything else: an OIDC access token, here a
JWT signed with a key the test made, checked for its signature, issuer, expiry
and group), then reverse-proxied with the path emptied and everything else
unchanged, Authorization included, so that the pod sees `POST /` with
`Host: <service>.<namespace>`.

The listening socket is made on this machine's loopback first; then the process
moves into the pod's network namespace (setns), where every connection to the pod
is made. Run: python -m tests.oscarpod.manager --netns /proc/PID/ns/net ...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import hashlib
import hmac
import json
import os
import socket
import time
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

CLONE_NEWNET = 0x40000000
ISSUER = "https://aai.example.invalid/oidc/"
GROUP = "vo.example.eu"
# hop-by-hop headers, which Go's httputil.ReverseProxy drops both ways
HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
       "upgrade", "proxy-authenticate", "proxy-authorization"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(key: bytes, subject: str, lifetime: float = 600.0,
             groups: tuple[str, ...] = (GROUP,)) -> str:
    """An OIDC-access-token-shaped JWT (HS256) signed with `key`."""
    header = {"alg": "HS256", "typ": "JWT"}
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": subject, "iat": now, "exp": now + int(lifetime),
              "eduperson_entitlement": [f"urn:mace:egi.eu:group:{g}" for g in groups]}
    signing = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + _b64url(signature)


def verify_jwt(key: bytes, token: str) -> dict[str, Any] | None:
    """The claims when the token is ours, unexpired and in the group; else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(_unb64url(parts[0]))
        signature = _unb64url(parts[2])
        claims = json.loads(_unb64url(parts[1]))
    except ValueError:
        return None
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if header.get("alg") != "HS256" or not hmac.compare_digest(signature, expected):
        return None
    if claims.get("iss") != ISSUER or float(claims.get("exp", 0)) < time.time():
        return None
    if f"urn:mace:egi.eu:group:{GROUP}" not in claims.get("eduperson_entitlement", []):
        return None
    return dict(claims)


def enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


class Manager:
    def __init__(self, service: str, namespace: str, token: str, jwt_key: bytes,
                 upstream: str) -> None:
        self.service = service
        self.namespace = namespace
        self.token = token
        self.jwt_key = jwt_key
        self.upstream = upstream
        self.session: ClientSession | None = None

    def authorised(self, authorization: str) -> int | None:
        """None when allowed, else the status run.go answers."""
        parts = authorization.split("Bearer ")
        if len(parts) != 2:
            return 401
        raw = parts[1].strip()
        if len(raw) == 64:
            return None if raw == self.token else 401
        if verify_jwt(self.jwt_key, raw) is None:
            return 401
        return None

    async def run(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["service"] != self.service:
            return web.Response(status=404)
        denied = self.authorised(request.headers.get("Authorization", ""))
        if denied is not None:
            return web.Response(status=denied)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["Host"] = f"{self.service}.{self.namespace}"
        # as httputil.ReverseProxy does
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        assert self.session is not None
        query = ("?" + request.query_string) if request.query_string else ""
        async with self.session.request(
                request.method, f"{self.upstream}/{query}", headers=headers,
                data=request.content.iter_any() if request.body_exists else None,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding",
                                   "Content-Type"),
                auto_decompress=False, allow_redirects=False) as upstream:
            answer = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP and name.lower() != "content-length":
                    answer.headers.add(name, value)
            if upstream.content_length is not None:
                answer.content_length = upstream.content_length
            await answer.prepare(request)
            async for chunk in upstream.content.iter_any():
                await answer.write(chunk)
            await answer.write_eof()
            return answer

    async def start(self, app: web.Application) -> Any:
        self.session = ClientSession(connector=TCPConnector(force_close=False),
                                     timeout=ClientTimeout(total=None))
        yield
        await self.session.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--namespace", default="oscar-svc")
    parser.add_argument("--token", required=True)
    parser.add_argument("--jwt-key-hex", required=True)
    parser.add_argument("--upstream", default="http://127.0.0.1:8080")
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    # from here on, new sockets (the ones to the pod) are made in the pod's network
    enter_netns(args.netns)
    manager = Manager(args.service, args.namespace, args.token,
                      bytes.fromhex(args.jwt_key_hex), args.upstream)
    app = web.Application()
    app.router.add_route("*", "/run/{service}", manager.run)
    app.cleanup_ctx.append(manager.start)
    print(f"listening port={listener.getsockname()[1]}", flush=True)
    web.run_app(app, sock=listener, print=None, access_log=None,
                handle_signals=True, loop=asyncio.new_event_loop())


if __name__ == "__main__":
    main()
