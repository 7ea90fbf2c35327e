"""A real app behind the LDAP proxy: Apache httpd with mod_authnz_ldap (HTTP Basic auth).

The browser (here curl) sends the same password+code with every request, and with
mod_ldap's own cache off every request reaches the proxy: each must be accepted (SPEC 6,
apps that bind again), not refused as a replay until the user is locked.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.harness import Bridge, code_for, free_tcp_port
from tests.integration.test_ldap_proxy import enroll, password_of, state_of, with_proxy
from tests.slapd import Slapd

pytestmark = pytest.mark.integration

MakeBridge = Callable[..., Bridge]
MODULES = Path("/usr/lib/apache2/modules")

CONFIG = """\
ServerRoot "{root}"
ServerName localhost
Listen 127.0.0.1:{port}
PidFile {root}/httpd.pid
ErrorLog {root}/error.log
LogLevel warn
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule auth_basic_module {modules}/mod_auth_basic.so
LoadModule ldap_module {modules}/mod_ldap.so
LoadModule authnz_ldap_module {modules}/mod_authnz_ldap.so
DocumentRoot {root}/www
# mod_ldap's caches off: every request's password+code reaches the LDAP proxy.
LDAPCacheEntries 0
LDAPCacheTTL 0
LDAPOpCacheEntries 0
<Directory {root}/www>
    AuthType Basic
    AuthName "wiki"
    AuthBasicProvider ldap
    AuthLDAPURL "ldap://{proxy}/{base}?uid?sub?(objectClass=inetOrgPerson)"
    AuthLDAPBindDN "{bind_dn}"
    AuthLDAPBindPassword "{bind_password}"
    Require valid-user
</Directory>
"""


@pytest.fixture
def apache() -> Iterator[Callable[..., str]]:
    """Start httpd with the config above for a proxy; yields its base URL; stops it."""
    binary = require_binary("apache2")
    require_binary("curl")
    procs: list[subprocess.Popen[bytes]] = []
    roots: list[Path] = []

    def start(proxy: str, slapd: Slapd) -> str:
        # httpd's workers drop root for an unprivileged user: the tree must be readable.
        root = Path(tempfile.mkdtemp(prefix="mfa-apache-"))
        roots.append(root)
        root.chmod(0o755)
        (root / "www").mkdir(mode=0o755)
        (root / "www" / "index.html").write_text("wiki page\n")
        (root / "www" / "index.html").chmod(0o644)
        port = free_tcp_port()
        text = CONFIG.format(
            root=root,
            port=port,
            modules=MODULES,
            proxy=proxy,
            base=slapd.people_dn,
            bind_dn=slapd.service_dn,
            bind_password=slapd.service_password,
        )
        if os.geteuid() == 0:
            text += "User nobody\nGroup nogroup\n"
        (root / "httpd.conf").write_text(text)
        proc = subprocess.Popen(
            [binary, "-f", str(root / "httpd.conf"), "-DFOREGROUND"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # httpd writes to its error.log
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                error = (root / "error.log").read_text() if (root / "error.log").exists() else ""
                raise RuntimeError(
                    f"httpd exited: {proc.stderr.read() if proc.stderr else b''!r} {error}"
                )
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}/index.html"
            time.sleep(0.05)
        raise RuntimeError("httpd did not listen")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def curl(url: str, user: str, password: str) -> int:
    """The HTTP status of one GET with Basic auth."""
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", f"{user}:{password}", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return int(result.stdout or 0)


def test_a_wiki_behind_mod_authnz_ldap_keeps_its_users_signed_in(
    slapd: Slapd, make_bridge: MakeBridge, apache: Callable[..., str]
) -> None:
    """20 requests with the same password+code: all 200, the user still active with no
    failure; a wrong code gets 401."""

    def change(config: dict[str, Any]) -> None:
        with_proxy(passthrough_dns=[slapd.service_dn])(config)

    bridge = make_bridge(change=change)
    user = "load154"
    code = code_for(enroll(bridge, user))
    url = apache(bridge.config["ldap_proxy"]["listen"], slapd)
    statuses = [curl(url, user, password_of(user) + code) for _ in range(20)]
    assert statuses == [200] * 20, bridge.log()[-2000:]
    status = state_of(bridge, user)
    assert status == "active"
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert curl(url, user, password_of(user) + wrong) == 401
    reasons = bridge.audit_reasons("ldap")
    assert reasons[:2] == ["activated", "rebind"]
    assert reasons.count("rebind") == 19 and reasons[-1] == "wrong-code"
