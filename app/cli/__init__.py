"""The command line: the daemon's setup and the HTTP-client commands."""
