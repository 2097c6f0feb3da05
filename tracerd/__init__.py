"""tracerd: attach tracers to Postfix daemons started with ``-D``.

The package holds three programs (``pftrace-hook``, ``tracerd``,
``tracerctl``) and the modules they share.  See README.md for the contract.
"""

__version__ = "0.1.0"
