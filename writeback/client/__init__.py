"""`writeback`, the administrators' client of the writeback API: a small HTTP client
(`writeback.client.api`) and the command line over it (`writeback.client.cli`).

It needs nothing but the standard library, so it installs anywhere Python runs, without the
cloud's or the relay's extras. It never takes a secret as a command-line argument, never sends a
credential in clear to anything but the local machine, and never prints or logs a password.
"""
