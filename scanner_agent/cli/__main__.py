"""``python -m scanner_agent.cli``: the ``scanner-agent`` command."""

import sys

from scanner_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
