"""The one exception type the command line turns into a clean error message."""

__all__ = ["CLIError"]


class CLIError(Exception):
    """A problem with the user's input (a flag, a file, a directory).

    `nbdl.cli.main` prints ``nbdl: error: <message>`` to stderr and exits with
    `exit_code`, without a traceback: the message alone must say what to fix.
    """

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code
