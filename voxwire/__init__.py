"""The `voxwire` command: a dispatcher that imports only the part a subcommand needs."""
