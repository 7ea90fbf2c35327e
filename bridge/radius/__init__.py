"""RADIUS for mfa-bridge: the pure packet codec and, beside it, the UDP protocol."""
