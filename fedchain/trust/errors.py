"""The one exception of the trust part, so a caller can tell a trust failure from any other."""


class TrustError(ValueError):
    """A key, key file, certificate or login that cannot be trusted, with what to do about it."""
