"""A small HTTP client for the portal's tests: cookies, forms and their CSRF tokens."""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Response:
    """Status, headers (lower-case names; Set-Cookie lines kept apart) and the body."""

    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: str

    @property
    def csrf(self) -> str | None:
        found = _CSRF.search(self.body)
        return found.group(1) if found else None


@dataclass
class PortalClient:
    """One browser-like client of the portal at host:port (cookies kept, redirects not)."""

    host: str
    port: int
    jar: dict[str, str] = field(default_factory=dict)

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, **headers: str
    ) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            body = urlencode(form) if form is not None else None
            sent = {k.replace("_", "-"): v for k, v in headers.items()}
            if body is not None:
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            if self.jar:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
            conn.request(method, path, body=body, headers=sent)
            reply = conn.getresponse()
            raw_cookies = reply.headers.get_all("Set-Cookie") or []
            for line in raw_cookies:
                for name, morsel in SimpleCookie(line).items():
                    if morsel["max-age"] == "0" or not morsel.value:
                        self.jar.pop(name, None)
                    else:
                        self.jar[name] = morsel.value
            headers_out = {k.lower(): v for k, v in reply.getheaders() if k.lower() != "set-cookie"}
            return Response(reply.status, headers_out, raw_cookies, reply.read().decode())
        finally:
            conn.close()

    def get(self, path: str = "/") -> Response:
        return self.request("GET", path)

    def post(self, path: str, **form: str) -> Response:
        return self.request("POST", path, form)

    def sign_in(self, username: str, password: str, code: str = "") -> Response:
        """GET the sign-in form for its token, then send it."""
        token = self.get("/").csrf or ""
        return self.post("/sign-in", csrf=token, username=username, password=password, code=code)

    def form(self, path: str, **fields: str) -> Response:
        """POST a form of a signed-in page with the token the page carries."""
        token = self.get(path if path != "/sign-out" else "/").csrf or ""
        return self.post(path, csrf=token, **fields)
