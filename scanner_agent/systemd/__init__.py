"""The systemd adapter: the sd_notify protocol."""
