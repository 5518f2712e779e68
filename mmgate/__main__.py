"""``python -m mmgate`` is the ``mmgate`` command."""

import sys

from mmgate.cli import main

sys.exit(main())
