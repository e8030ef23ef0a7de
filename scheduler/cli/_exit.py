"""The exit codes of ``vsched``, one meaning each."""

__all__ = [
    "EXIT_FAILED",
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_STOPPED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
]

#: Every job done.
EXIT_OK = 0
#: The run ended, and some jobs failed (listed in the summary and the output).
EXIT_FAILED = 1
#: A usage, config or input error: nothing was sent.
EXIT_USAGE = 2
#: A fatal stop (quota, authentication): jobs not done are left pending, resumable.
EXIT_FATAL = 3
#: An operational fault (server, Redis, disk): jobs intact, resumable.
EXIT_UNAVAILABLE = 4
#: Stopped by a signal (Ctrl-C, SIGTERM): jobs not done are left pending, resumable.
EXIT_STOPPED = 130
#: The reader of the output went away (``vsched status | head``): 128 + SIGPIPE, as Unix tools.
EXIT_PIPE = 141
