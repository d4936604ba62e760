"""The running service: bootstrap (builds everything once), the daemon, the dispatcher."""
