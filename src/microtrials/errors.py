"""The one exception type a user can meet, with a message that says what to do."""


class MicrotrialsError(Exception):
    """An error an LA data officer can act on: names the file, the line, what is wrong, what to do."""
