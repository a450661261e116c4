"""Who may use the board, and which files it may serve. No HTTP here: the server asks.

- Loopback by default. A shared server's loopback is every user's, so a board has a token there
  too unless told otherwise (`--no-token`, loopback only); any other address needs a token, or
  `--read-only` (anyone who reaches it can look, nobody can act).
- The token comes as `?token=` once (the URL `runner board` prints), then as an HttpOnly,
  SameSite=Strict cookie; scripts may send `Authorization: Bearer TOKEN`.
- On loopback the Host header must name loopback: a web page whose own name resolves to
  127.0.0.1 (DNS rebinding) gets nothing.
- A file is served only from inside a run directory, after every symlink is resolved; a job spec
  only from inside the jobs directory, and not at all by a read-only board.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

from runner.core.errors import RunnerError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class AccessError(RunnerError):
    """The board's settings are unsafe (a token missing off loopback)."""


class NotServed(RunnerError):
    """Nothing the board serves has that name (a file outside the runs, a job spec outside jobs/)."""

    exit_code = 2


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    host: str
    port: int
    token: str | None
    read_only: bool = False

    @classmethod
    def configure(cls, host: str, port: int, token: str | None, no_token: bool, read_only: bool) -> Access:
        """The board's rules, or AccessError where they would open it to the network unprotected."""
        if no_token and token:
            raise AccessError("--token and --no-token contradict each other")
        if no_token and not is_loopback(host) and not read_only:
            raise AccessError(
                f"--no-token on {host}: anyone who reaches this address could stop and submit runs; "
                "give it a token (the default) or --read-only"
            )
        if no_token:
            return cls(host, port, None, read_only)
        if token is not None and (len(token) < 16 or not re.fullmatch(r"[A-Za-z0-9._~-]+", token)):
            raise AccessError("--token must be at least 16 letters, digits or . _ ~ - (it travels in an address "
                              "and a cookie); omit it and one is made for you")  # fmt: skip
        return cls(host, port, token or secrets.token_urlsafe(24), read_only)

    @property
    def cookie_name(self) -> str:
        # Cookies are kept per host name, not per port: two boards on one machine keep theirs apart.
        return f"runner_board_{self.port}"

    def allowed_host(self, header: str | None) -> bool:
        """On loopback: the Host header names loopback (no DNS rebinding). Elsewhere the token guards."""
        if not is_loopback(self.host):
            return True
        if not header:
            return False
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        return name.strip("[]").lower() in LOOPBACK_NAMES or is_loopback(name)

    def token_of(
        self, query_token: str | None, cookie_header: str | None, authorization: str | None
    ) -> str | None:
        if authorization and authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        if query_token:
            return query_token
        if cookie_header:
            cookie = SimpleCookie()
            try:
                cookie.load(cookie_header)
            except Exception:  # a malformed cookie header from another site's cookies: no token
                return None
            if self.cookie_name in cookie:
                return cookie[self.cookie_name].value
        return None

    def authorized(self, given: str | None) -> bool:
        if self.token is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def set_cookie(self) -> str:
        assert self.token is not None
        return f"{self.cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")


def inside(root: Path, relative: str) -> Path | None:
    """root/relative when it names a file inside root after resolving every symlink; None for
    anything else (.., an absolute path, a link that leads out, a NUL byte, a directory)."""
    if not relative or "\0" in relative or "\\" in relative or relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    try:
        base = root.resolve(strict=True)
        target = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target
