"""``python -m fabricmetrics``: the same as the ``fabricmetrics`` command."""

from fabricmetrics.cli import main

raise SystemExit(main())
