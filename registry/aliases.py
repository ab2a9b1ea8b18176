"""The registry's alias names, the only pointers serving and rollback follow.

``challenger`` marks a version that passed the gate (the canary candidate), ``champion`` the
version that serves, ``previous-champion`` the rollback target. They live apart from
``versions.py`` (which sets ``challenger`` at registration) and ``promotion.py`` (which
moves the other two), so neither module has to import the other for a name.
"""

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous-champion"
