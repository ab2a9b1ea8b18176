"""The serving config file: partners the operator declares, and fallback routes.

YAML, read by the gateway at start (``--config``, else ``$MLOPS_SERVING_CONFIG``, else
``$MLOPS_HOME/serving/config.yaml`` when it exists) and by the Dagster side for the
dependency inventory, so both see the same declaration::

    partners:
      claude: {kind: anthropic, base_url: https://api.anthropic.com,
               model: claude-3-5-haiku-latest, api_key_env: ANTHROPIC_API_KEY, timeout_s: 20}
    fallback_routes:
      auto: [claude, sovereign-lm]

The file holds the *name* of each key's environment variable, never a key. Every error
names the file and the field (``partners.claude.timeout_s``) and says what was expected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from serving.errors import InvalidRequest
from serving.partners.spec import PartnerSpec

CONFIG_ENV = "MLOPS_SERVING_CONFIG"


class ServingConfigError(ValueError):
    def __init__(self, path: Path, where: str, message: str) -> None:
        super().__init__(f"{path}: {where}: {message}")
        self.path, self.where = path, where


@dataclass(frozen=True)
class ServingConfig:
    partners: dict[str, PartnerSpec] = field(default_factory=dict)
    fallback_routes: dict[str, list[str]] = field(default_factory=dict)


def default_config_path() -> Path | None:
    """``$MLOPS_SERVING_CONFIG``, else ``$MLOPS_HOME/serving/config.yaml`` if it exists."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    home = os.environ.get("MLOPS_HOME")
    candidate = Path(home) / "serving" / "config.yaml" if home else None
    return candidate if candidate is not None and candidate.is_file() else None


def load_serving_config(path: Path | str) -> ServingConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServingConfigError(
            path, "file", "not found; check --config or $MLOPS_SERVING_CONFIG"
        ) from None
    except yaml.YAMLError as exc:
        raise ServingConfigError(path, "file", f"not valid YAML ({exc})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ServingConfigError(
            path, "top level", "must be a mapping with partners / fallback_routes"
        )
    unknown = set(data) - {"partners", "fallback_routes"}
    if unknown:
        raise ServingConfigError(path, "top level", f"unknown keys {sorted(unknown)}")
    partners = _partners(path, data.get("partners") or {})
    routes = _fallback_routes(path, data.get("fallback_routes") or {}, partners)
    return ServingConfig(partners, routes)


def _partners(path: Path, raw: object) -> dict[str, PartnerSpec]:
    if not isinstance(raw, dict):
        raise ServingConfigError(path, "partners", "must be a mapping of name -> partner")
    partners = {}
    for name, fields in raw.items():
        where = f"partners.{name}"
        if not isinstance(fields, dict):
            raise ServingConfigError(path, where, "must be a mapping (kind, base_url, model, ...)")
        try:
            partners[str(name)] = PartnerSpec.from_dict(str(name), fields)
        except InvalidRequest as exc:
            field_name = f"{where}.{exc.param}" if exc.param not in (None, "partner") else where
            raise ServingConfigError(path, field_name, exc.message) from None
        except TypeError as exc:
            raise ServingConfigError(path, where, f"bad field value ({exc})") from None
    return partners


def _fallback_routes(
    path: Path, raw: object, partners: dict[str, PartnerSpec]
) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise ServingConfigError(path, "fallback_routes", "must be a mapping of name -> [entries]")
    routes = {}
    for name, order in raw.items():
        where = f"fallback_routes.{name}"
        if not isinstance(order, list) or not order or not all(isinstance(e, str) for e in order):
            raise ServingConfigError(path, where, "must be a non-empty list of names")
        if order[-1] in partners:
            raise ServingConfigError(
                path,
                where,
                f"must end in a local route (the sovereign model), not partner {order[-1]!r}",
            )
        if str(name) in partners:
            raise ServingConfigError(path, where, f"{name!r} is also a partner name")
        routes[str(name)] = list(order)
    return routes
