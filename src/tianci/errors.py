"""User-facing errors. The CLI prints these as one clear line (no traceback) and exits 2."""


class TianciError(Exception):
    """Bad input from the user: a missing file, a malformed poem, a parameter out of range.

    The message must name the thing (file, poem index, parameter, allowed range)."""
