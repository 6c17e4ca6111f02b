"""``python -m nasframe``: the ``nasframe`` command line."""
from __future__ import annotations

import sys

from nasframe.cli import main

sys.exit(main())
