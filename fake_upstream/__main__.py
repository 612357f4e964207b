"""``python -m fake_upstream``: the OpenAI-compatible fake model server."""

from __future__ import annotations

import sys

from fake_upstream.server import main

sys.exit(main(sys.argv[1:]))
