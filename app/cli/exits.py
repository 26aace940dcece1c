"""Exit codes shared by the commands."""

EXIT_INVALID = 2  # a bad lab, request or environment: nothing was created
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_NO_DAEMON = 69  # EX_UNAVAILABLE (sysexits.h): nothing answers at the API address
