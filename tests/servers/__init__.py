"""Local servers speaking real wire protocols (Google Sheets v4, Slack Web API) for tests."""
