"""A live tour of runtrack: twenty background runs with every outcome, shown as they happen.

The demo lives in the ``runtrack`` command (``runtrack demo``, which ``make demo`` runs);
this script runs the same thing. Arguments are passed on: ``python examples/demo.py
--help``, or ``python examples/demo.py --registry redis://127.0.0.1:6379/0`` to record the
runs in Redis instead of a fresh ``./runtrack-demo.db``.
"""

import sys

from runtrack.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    # Global options (--registry URL, --prefix P, --debug) go before the subcommand.
    main([*args, "demo"] if "--help" not in args and "-h" not in args else ["demo", "--help"])
