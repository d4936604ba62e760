"""The storage adapter: the verified copy engine, placement, supersede and quarantine."""
