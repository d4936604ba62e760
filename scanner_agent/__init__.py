"""scanner-agent."""
