"""Resources shared by every domain: where the embedded default keeps its state.

All state of the embedded default lives under one root, `$MLOPS_HOME` (default
`./.mlops`). The environment is read when a run asks for a path, never at import time,
so a code location loaded once serves runs with different homes (tests rely on this).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from observability.settings import home_from, mlops_home


class MlopsHome(dg.ConfigurableResource):
    """The state root and its well-known folders.

    Leave the fields empty to follow `$MLOPS_HOME`; set them to point a deployment at
    other places (e.g. a landing directory on a shared volume).
    """

    home: str | None = None
    landing_dir: str | None = None

    def root(self) -> Path:
        return home_from(self.home) if self.home else mlops_home()

    def landing(self) -> Path:
        if self.landing_dir:
            return Path(self.landing_dir).expanduser().resolve()
        return self.root() / "landing"

    def lake(self) -> Path:
        return self.root() / "lake"

    def path(self, *parts: str) -> Path:
        return self.root().joinpath(*parts)
