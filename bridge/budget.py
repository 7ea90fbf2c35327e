"""File descriptors: what the configured limits can use at most, and what the process may.

Every connection the bridge accepts or opens is a descriptor. If the limits let it open
more than the process is allowed, the listeners fail with EMFILE when it counts (the
portal and the LDAP proxy reset new connections, an upstream link cannot be opened and
a bind fails), which looks to clients like anything but "too busy". So the daemon
raises its soft limit to what the configured limits need and refuses to start when
even the hard limit (systemd's LimitNOFILE) is too low.
"""

from __future__ import annotations

import resource

from bridge.config import Config

BASE = 64  # standard streams, logs, the store and its WAL, the key, epoll, threads, slack


def descriptors_needed(config: Config) -> dict[str, int]:
    """Descriptors each part may hold at most, by the config key that sets it."""
    directory = config.directory
    # Each directory connection is a socket and the duplicate the reactor watches.
    needs = {"directory.pool_size": len(directory.urls) * (directory.pool_size + 1) * 2}
    proxy = config.ldap_proxy
    if proxy is not None:  # a bound session: the client's connection and its upstream link
        needs["ldap_proxy.max_connections"] = 2 * proxy.max_connections + 2
    portal = config.portal
    if portal is not None:
        needs["portal.max_connections"] = portal.max_connections + 1
    if config.metrics is not None:
        needs["metrics.listen"] = 16
    if config.demo is not None:
        needs["demo"] = 2 * needs["directory.pool_size"] + 1
    needs["radius"] = 1
    return needs


def ensure_descriptors(config: Config) -> str | None:
    """Raise the soft limit to what the config needs; a problem to report, or None."""
    needs = descriptors_needed(config)
    total = BASE + sum(needs.values())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < total:
        if hard != resource.RLIM_INFINITY and hard < total:
            parts = ", ".join(f"{key} {count}" for key, count in needs.items())
            return (
                f"the configured limits may need {total} file descriptors ({parts}, {BASE}"
                f" more for the rest), but this process may open only {hard}: raise"
                " LimitNOFILE in the unit (the shipped one sets 65536), or lower"
                " ldap_proxy.max_connections or portal.max_connections"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (total, hard))
    return None
