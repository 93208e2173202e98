"""The one exception type users see as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input (config, file, checkpoint): the message names the culprit and a hint."""


class Interrupted(UserError):
    """A run stopped by SIGINT/SIGTERM after saving a checkpoint: a sweep stops with it."""
