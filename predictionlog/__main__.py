"""``python -m predictionlog``: the log writer process (see ``predictionlog.writer``)."""

import sys

from predictionlog.writer import main

sys.exit(main())
