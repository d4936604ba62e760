"""Local servers speaking real wire protocols (Google Sheets v4, Slack Web API, SMTP) for tests.

``tests.servers.fixtures`` holds the ``slack`` and ``smtp`` fixtures; a test module loads them with
``pytest_plugins = ["tests.servers.fixtures"]``.
"""
