"""Fault injection: full and vanishing storage, a lost watch folder, a full journal disk, SIGKILL,
moving clocks."""
