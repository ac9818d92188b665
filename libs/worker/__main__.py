"""``python -m libs.worker <service> [--check]`` (see :mod:`libs.worker`)."""

from __future__ import annotations

import sys

from libs.worker.cli import main

sys.exit(main())
