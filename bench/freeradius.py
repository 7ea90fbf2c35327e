"""FreeRADIUS 3.2 doing the bridge's job, from a private config directory (never /etc).

The same work as mfa-bridge in append mode: PAP with the 6-digit code appended, split in
unlang with a regex; the password checked by rlm_ldap (search as the service account,
bind as the user, connection pool); the code by rlm_totp against per-user secrets from an
rlm_files users file; both required for Access-Accept; reject_delay = 0.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

RADIUSD_CONF = """\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = {work}
sbindir = /usr/sbin
logdir = {work}/log
raddbdir = {work}
radacctdir = {work}/log/radacct
name = freeradius
confdir = {work}
modconfdir = {work}/mods-config
run_dir = {work}/run
db_dir = {work}
libdir = /usr/lib/freeradius
pidfile = {work}/run/freeradius.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no

log {{
    destination = files
    file = {work}/log/radius.log
    syslog_facility = daemon
    stripped_names = no
    auth = no
}}

security {{
    max_attributes = 200
    reject_delay = 0
    status_server = yes
    allow_vulnerable_openssl = yes
}}

thread pool {{
    start_servers = 8
    max_servers = 32
    min_spare_servers = 4
    max_spare_servers = 16
    max_requests_per_server = 0
    auto_limit_acct = no
}}

client bench {{
    ipaddr = 127.0.0.1
    secret = {secret}
    require_message_authenticator = no
}}

modules {{
    ldap {{
        server = '{ldap_host}'
        port = {ldap_port}
        identity = '{bind_dn}'
        password = '{bind_password}'
        base_dn = '{base_dn}'
        user {{
            base_dn = '{base_dn}'
            filter = "(uid=%{{User-Name}})"
        }}
        options {{
            chase_referrals = no
            rebind = no
            res_timeout = 10
            srv_timelimit = 3
            net_timeout = 1
        }}
        pool {{
            start = 8
            min = 4
            max = 32
            spare = 16
            uses = 0
            retry_delay = 30
            lifetime = 0
            idle_timeout = 0
        }}
    }}
    totp {{
    }}
    always reject {{
        rcode = reject
    }}
    files {{
        moddir = {work}
        filename = {work}/users
    }}
{eap_module}}}

server default {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {port}
    }}
{default_server}}}
{inner_tunnel}"""

# PAP with the code appended: split in unlang, LDAP search + bind, then rlm_totp.
PAP_SERVER = """\
    authorize {
        if (&User-Password =~ /^(.+)([0-9]{6})$/) {
            update request {
                &TOTP-Password := "%{2}"
                &User-Password := "%{1}"
            }
        }
        else {
            reject
        }
        files
        ldap
        update control {
            &Auth-Type := 'LDAP_TOTP'
        }
    }
    authenticate {
        Auth-Type LDAP_TOTP {
            ldap
            totp
        }
    }
"""

# EAP-TTLS terminated by the eap module; the inner PAP goes to PAP_SERVER's policy.
EAP_MODULE = """\
    eap {
        default_eap_type = ttls
        timer_expire = 60
        ignore_unknown_eap_types = no
        max_sessions = 4096
        tls-config tls-common {
            private_key_file = %(key)s
            certificate_file = %(certificate)s
            ca_file = %(ca)s
            cipher_list = "DEFAULT"
            tls_min_version = "1.2"
            tls_max_version = "%(tls_max)s"
            ecdh_curve = ""
            fragment_size = 1024
            cache {
                enable = no
            }
            verify {
            }
            ocsp {
                enable = no
            }
        }
        ttls {
            tls = tls-common
            copy_request_to_tunnel = no
            use_tunneled_reply = no
            virtual_server = "inner-tunnel"
        }
    }
"""

EAP_SERVER = """\
    authorize {
        eap {
            ok = return
        }
    }
    authenticate {
        Auth-Type EAP {
            eap
        }
    }
"""


class FreeRadius:
    """A private FreeRADIUS: config, users file and logs under `work`."""

    def __init__(
        self,
        work: Path,
        *,
        port: int,
        secret: str,
        ldap_url: str,
        bind_dn: str,
        bind_password: str,
        base_dn: str,
        secrets: dict[str, str],
        eap: dict[str, str] | None = None,
    ) -> None:
        """`eap`: certificate, key, ca (PEM paths) and tls_max ("1.2" or "1.3") to serve
        EAP-TTLS/PAP instead of plain PAP."""
        self.work = work
        self.port = port
        host, _, ldap_port = ldap_url.removeprefix("ldap://").partition(":")
        (work / "log").mkdir(parents=True, exist_ok=True)
        (work / "run").mkdir(exist_ok=True)
        (work / "mods-config").mkdir(exist_ok=True)
        (work / "dictionary").write_text("$INCLUDE /usr/share/freeradius/dictionary\n")
        (work / "radiusd.conf").write_text(
            RADIUSD_CONF.format(
                work=work,
                port=port,
                secret=secret,
                ldap_host=host,
                ldap_port=ldap_port or 389,
                bind_dn=bind_dn,
                bind_password=bind_password,
                base_dn=base_dn,
                eap_module=EAP_MODULE % eap if eap else "",
                default_server=EAP_SERVER if eap else PAP_SERVER,
                inner_tunnel="\nserver inner-tunnel {\n" + PAP_SERVER + "}\n" if eap else "",
            )
        )
        (work / "users").write_text(
            "".join(f'"{user}" TOTP-Secret := "{key}"\n' for user, key in secrets.items())
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        """`freeradius -C`: the config parses."""
        subprocess.run(
            [self._binary(), "-C", "-d", str(self.work)], check=True, capture_output=True
        )

    def start(self) -> None:
        """Run in the foreground as a child, and wait for the listener."""
        log = (self.work / "log" / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [self._binary(), "-f", "-d", str(self.work)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        time.sleep(0.3)
        if self.proc.poll() is not None:
            text = (self.work / "log" / "stdout.log").read_text(errors="replace")
            raise RuntimeError(f"freeradius exited: {text[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @staticmethod
    def _binary() -> str:
        path = shutil.which("freeradius") or shutil.which("freeradius", path="/usr/sbin")
        if path is None:
            raise RuntimeError("freeradius not found (apt-get install freeradius freeradius-ldap)")
        return path
