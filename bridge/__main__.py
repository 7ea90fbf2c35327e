"""`python -m bridge` is the `mfa-bridge` command."""

import sys

from bridge.cli import main

sys.exit(main())
