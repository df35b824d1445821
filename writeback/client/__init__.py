"""`writeback`, the administrators' client of the writeback API: a small HTTP client
(`writeback.client.api`) and the command line over it (`writeback.client.cli`).

With an API key or a token it is given, it needs nothing but the standard library, so it
installs anywhere Python runs, without the cloud's or the relay's extras. Signing in to Entra ID
(`--auth`, `writeback login`, `writeback.client.signin`) and `writeback entra`
(`writeback.client.entra`, over `writeback.entra`, which talks to Microsoft Graph) use
azure-identity, the `admin` extra. It never takes a secret as a command-line argument,
never sends a credential in clear to anything but the local machine, and never prints or logs
a password.
"""
