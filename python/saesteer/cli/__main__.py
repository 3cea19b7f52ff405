"""``python -m saesteer.cli ...``: the same as the ``saesteer`` command."""

import sys

from . import main

sys.exit(main())
