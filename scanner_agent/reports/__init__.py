"""What the agent tells a person on the command line: status, check, reconcile."""
