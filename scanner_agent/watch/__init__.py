"""The watch-folder adapter: watchdog observers, scan units on disk, completeness probes."""
