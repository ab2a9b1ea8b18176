"""Test doubles and fault hooks for the test suite and benchmarks; never shipped.

Not in ``[tool.setuptools.packages.find]``, so an installed product cannot import it:
fake partner servers (``testing.partners``) and the registry CLI that crashes on demand
(``testing.registry_crash``). Importable when the repository root is on ``sys.path``, as it
is for ``python -m pytest`` and ``python -m testing...`` run from the root.
"""
