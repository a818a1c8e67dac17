"""The one exception type for bad input anywhere in the suite.

Raise :class:`WxscaleError` when the user can fix the problem: the message names the file, field or flag
and says what would fix it. The command line prints it without a traceback and exits with status 2.
Programming errors stay ordinary exceptions, so their tracebacks are not hidden.
"""


class WxscaleError(Exception):
    """Bad input: a message that names what is wrong and how to fix it."""


class ConfigError(WxscaleError, ValueError):
    """A configuration field is invalid (the message names the field)."""
