"""Version tags written by promotion and rollback: the ``rollback.*`` schema and its writer.

A rolled-back version carries ``rollback.reason``, ``rollback.by``, ``rollback.at`` and,
when traffic went back to another version, ``rollback.to``. :class:`RollbackTags` is the
only code that spells those keys: :meth:`RollbackTags.tags` writes them and
:meth:`RollbackTags.from_tags` reads them back (None for a version never rolled back).
``promote`` refuses a version carrying them unless forced. :func:`set_version_tags` is the
one path by which the registry package and the orchestration layer write version tags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from registry.client import RegistryClient

ROLLBACK_PREFIX = "rollback."


@dataclass(frozen=True)
class RollbackTags:
    reason: str
    by: str
    at: str  # ISO 8601, UTC
    to: str = ""  # the version that took the traffic back; "" when it never left stable

    def tags(self) -> dict[str, str]:
        tags = {
            ROLLBACK_PREFIX + "reason": self.reason,
            ROLLBACK_PREFIX + "by": self.by,
            ROLLBACK_PREFIX + "at": self.at,
        }
        if self.to:
            tags[ROLLBACK_PREFIX + "to"] = self.to
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> RollbackTags | None:
        """The rollback a version's tags record, or None when they record none."""
        reason = tags.get(ROLLBACK_PREFIX + "reason")
        if reason is None:
            return None
        return cls(
            reason=reason,
            by=tags.get(ROLLBACK_PREFIX + "by", ""),
            at=tags.get(ROLLBACK_PREFIX + "at", ""),
            to=tags.get(ROLLBACK_PREFIX + "to", ""),
        )


def set_version_tags(client: RegistryClient, version: str, tags: Mapping[str, str]) -> None:
    """Write ``tags`` on ``version`` of the client's model, one retried call each."""
    name = client.config.model_name
    for key, value in tags.items():
        client.call(
            "set_model_version_tag", client.mlflow.set_model_version_tag, name, version, key, value
        )
