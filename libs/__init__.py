"""Shared code of every aistack process."""

import sys

# httpx's package __init__ imports its command-line client when click, rich and pygments are
# installed (they are, for other tools): about 80 modules and 4-5 MB of memory in every
# service process that never runs that CLI. A None entry makes that import fail the way httpx
# expects when the CLI's dependencies are missing. Set before anything imports httpx.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
