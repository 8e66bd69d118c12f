"""User-facing errors: one clear message (what, where, how to fix) and a non-zero exit."""


class FewclipError(Exception):
    """An error the user can cause and fix (bad data, bad config, missing weights)."""

    exit_code = 2


class DataError(FewclipError):
    """Missing or malformed dataset files."""


class ConfigError(FewclipError):
    """Unknown names or bad values in a config or on the command line."""
