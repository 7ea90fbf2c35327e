"""The LDAP bind proxy (SPEC section 6): simple binds get MFA, the rest goes upstream."""
