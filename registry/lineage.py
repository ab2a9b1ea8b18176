"""Lineage of a model version: where its data, code and training came from.

Every registered version carries these as ``lineage.*`` tags, so the question "what was
this model trained on, by which code, in which run" is answered from the registry alone.
:meth:`Lineage.tags` writes them and :meth:`Lineage.from_tags` reads them back: no other
code spells a ``lineage.*`` key.
The model digest (sha256 over the artifact's files) doubles as the identity that makes
registration idempotent: registering the same artifact twice finds the first version.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

_DIGEST_FILES = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")
LINEAGE_PREFIX = "lineage."


@dataclass(frozen=True)
class Lineage:
    data_path: str
    data_version: int | None
    training_run_id: str  # the orchestrator run that trained the model ("" when unknown)
    config_hash: str
    code_version: str
    model_sha256: str
    init: str = ""  # "warm_start" (fine-tuned from parent_version) or "scratch"; "" unknown
    parent_version: str = ""
    seed: str = ""

    @staticmethod
    def tag(field_name: str) -> str:
        """The registry tag key of lineage field ``field_name`` (for search filters)."""
        return LINEAGE_PREFIX + field_name

    def tags(self) -> dict[str, str]:
        extra = {
            self.tag(k): v
            for k, v in (
                ("init", self.init),
                ("parent_version", self.parent_version),
                ("seed", self.seed),
            )
            if v
        }
        return extra | {
            self.tag("data_path"): self.data_path,
            self.tag("data_version"): "" if self.data_version is None else str(self.data_version),
            self.tag("training_run_id"): self.training_run_id,
            self.tag("config_hash"): self.config_hash,
            self.tag("code_version"): self.code_version,
            self.tag("model_sha256"): self.model_sha256,
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Lineage:
        """The inverse of :meth:`tags`, from a version's tags. A missing tag reads as
        unknown ("" or None), as does a data version that is not a number: versions
        registered before a field existed still read."""
        values = {f.name: tags.get(cls.tag(f.name), "") for f in fields(cls)}
        version = values["data_version"]
        values["data_version"] = int(version) if version.isdigit() else None
        return cls(**values)


def model_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in _DIGEST_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def code_version(repo: Path | None = None) -> str:
    """The git commit of the code (``+dirty`` when the tree has changes), or ``unknown``."""
    cwd = repo or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def lineage_of(
    model_dir: Path,
    training_run_id: str = "",
    data_path: str | None = None,
    data_version: int | None = None,
    init: str = "",
    parent_version: str = "",
) -> Lineage:
    """Lineage from ``training_summary.json`` in ``model_dir``; explicit arguments win."""
    summary_path = model_dir / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    version = data_version if data_version is not None else summary.get("data_version")
    return Lineage(
        data_path=str(data_path or summary.get("data_path") or ""),
        data_version=None if version is None else int(version),
        training_run_id=training_run_id,
        config_hash=str(summary.get("config_hash") or ""),
        code_version=code_version(),
        model_sha256=model_digest(model_dir),
        init=init,
        parent_version=parent_version,
        seed="" if summary.get("seed") is None else str(summary["seed"]),
    )
