"""The alert adapters: Slack, e-mail and the alerter that sends to both."""
