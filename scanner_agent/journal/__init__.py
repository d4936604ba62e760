"""The journal adapter: the SQLite record of every scan, and the alert outbox in the same file."""
