"""mfa-bridge: TOTP multi-factor authentication for RADIUS and LDAP simple-bind logins."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mfa-bridge")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
