"""The MLflow model registry of ``sovereign-lm``: versions, lineage, aliases, promotion.

Aliases only (MLflow stages are deprecated): ``challenger`` (passed the gate, candidate
for canary), ``champion`` (serving), ``previous-champion`` (rollback target).
``register_version`` adds a version, ``promote`` / ``rollback`` / ``recover`` move the
aliases under a lock, ``download_model_dir`` fetches a version's Hugging Face directory.
"""

from registry.aliases import CHALLENGER, CHAMPION, PREVIOUS
from registry.client import RegistryClient
from registry.config import MODEL_NAME, RegistryConfig
from registry.errors import (
    GateNotPassedError,
    PromotionConflictError,
    PromotionLockTimeout,
    RegistryError,
    RegistryInconsistentError,
    RegistryUnavailableError,
    RollbackUnavailableError,
)
from registry.lineage import Lineage, lineage_of
from registry.promotion import AliasChange, ForcedPromotion, promote, recover, rollback
from registry.tags import RollbackTags, set_version_tags
from registry.versions import RegisteredVersion, download_model_dir, register_version

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_NAME",
    "PREVIOUS",
    "AliasChange",
    "ForcedPromotion",
    "GateNotPassedError",
    "Lineage",
    "PromotionConflictError",
    "PromotionLockTimeout",
    "RegisteredVersion",
    "RegistryClient",
    "RegistryConfig",
    "RegistryError",
    "RegistryInconsistentError",
    "RegistryUnavailableError",
    "RollbackTags",
    "RollbackUnavailableError",
    "download_model_dir",
    "lineage_of",
    "promote",
    "recover",
    "register_version",
    "rollback",
    "set_version_tags",
]
