"""The CLI's errors, one class per exit status, so `main` maps them to one line and one code.

The exit status tells a script what to do next without parsing text: 1 the service answered no (or
a server ended up failed), 2 the command line or the configuration is wrong (fix it, do not retry),
3 the service could not be reached (retrying later may help).
"""

from __future__ import annotations


class CliError(Exception):
    """A failure reported as `zlh: <message>` with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """A bad flag, a missing URL or token, an unreadable configuration file."""

    exit_code = 2


class ApiError(CliError):
    """The service refused the request (4xx) or failed (5xx).

    Attributes:
        status: the HTTP status (or the WebSocket close code mapped to one, e.g. 4401 -> 401).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServerFailed(CliError):
    """A server `create --wait` waited for ended somewhere other than running."""


class ConnectionFailed(CliError):
    """No answer: refused, reset, timed out, or a stream that could not be resumed."""

    exit_code = 3
