"""The one exception type users see as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input (config, file, checkpoint): the message names the culprit and a hint."""
