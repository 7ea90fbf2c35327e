"""The self-service portal (SPEC section 7): sign in, see the days left, set up or reset MFA."""
