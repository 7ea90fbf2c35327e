"""mfa-bridge: TOTP multi-factor authentication for RADIUS and LDAP simple-bind logins."""
