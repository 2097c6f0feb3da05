"""tracerd: attach tracers to Postfix daemons started with ``-D``.

Three programs (``pftrace-hook``, ``tracerd``, ``tracerctl``) and their shared
modules; README.md is the contract.

Security: see each module.

Diagnostics: see each module.
"""

__version__ = "0.1.0"
