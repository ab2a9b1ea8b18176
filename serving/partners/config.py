"""The serving config file: partners the operator declares, and fallback routes.

YAML, read by the gateway at start (``--config``, else ``$MLOPS_SERVING_CONFIG``, else
``$MLOPS_HOME/serving/config.yaml`` when it exists) and by the Dagster side for the
dependency inventory, so both see the same declaration::

    partners:
      claude: {kind: anthropic, base_url: https://api.anthropic.com,
               model: claude-3-5-haiku-latest, api_key_env: ANTHROPIC_API_KEY, timeout_s: 20}
    fallback_routes:
      auto: [claude, sovereign-lm]

The file holds the *name* of each key's environment variable, never a key. Its shape is a
pydantic model (:class:`ServingConfigFile`); every error names the file and the field
(``partners.claude.timeout_s``) and says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from observability.settings import Settings
from serving.errors import InvalidRequest
from serving.partners.spec import PartnerSpec

# what each section must look like, said to the operator when it does not
_EXPECTED = {
    ("partners",): "must be a mapping of name -> partner",
    ("partners", "*"): "must be a mapping (kind, base_url, model, ...)",
    ("fallback_routes",): "must be a mapping of name -> [entries]",
    ("fallback_routes", "*"): "must be a non-empty list of names",
}


class ServingConfigError(ValueError):
    def __init__(self, path: Path, where: str, message: str) -> None:
        super().__init__(f"{path}: {where}: {message}")
        self.path, self.where = path, where


@dataclass(frozen=True)
class ServingConfig:
    partners: dict[str, PartnerSpec] = field(default_factory=dict)
    fallback_routes: dict[str, list[str]] = field(default_factory=dict)


class ServingConfigFile(BaseModel):
    """The file's shape; each partner's fields are checked by :class:`PartnerSpec`, the
    same rules the admin API applies."""

    model_config = ConfigDict(extra="forbid", strict=True)

    partners: dict[str, dict[str, Any]] = {}
    fallback_routes: dict[str, Annotated[list[str], Field(min_length=1)]] = {}


def default_config_path() -> Path | None:
    """``$MLOPS_SERVING_CONFIG``, else ``$MLOPS_HOME/serving/config.yaml`` if it exists."""
    return Settings.from_env().serving_config_path()


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
    try:  # an empty section (`partners:` alone) reads as None: the same as leaving it out
        parsed = ServingConfigFile.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        raise _config_error(path, exc) from None
    partners = _partners(path, parsed.partners)
    routes = _fallback_routes(path, parsed.fallback_routes, partners)
    return ServingConfig(partners, routes)


def _config_error(path: Path, exc: ValidationError) -> ServingConfigError:
    """The first problem, named by its field (``fallback_routes.auto``)."""
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        unknown = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden")
        return ServingConfigError(path, "top level", f"unknown keys {unknown}")
    section = loc[:2]
    expected = _EXPECTED.get((loc[0], "*") if len(section) > 1 else (loc[0],), error["msg"])
    return ServingConfigError(path, ".".join(section), expected)


def _partners(path: Path, raw: dict[str, dict[str, Any]]) -> dict[str, PartnerSpec]:
    partners = {}
    for name, fields in raw.items():
        where = f"partners.{name}"
        try:
            partners[name] = PartnerSpec.from_dict(name, fields)
        except InvalidRequest as exc:
            field_name = f"{where}.{exc.param}" if exc.param not in (None, "partner") else where
            raise ServingConfigError(path, field_name, exc.message) from None
        except TypeError as exc:
            raise ServingConfigError(path, where, f"bad field value ({exc})") from None
    return partners


def _fallback_routes(
    path: Path, raw: dict[str, list[str]], partners: dict[str, PartnerSpec]
) -> dict[str, list[str]]:
    routes = {}
    for name, order in raw.items():
        where = f"fallback_routes.{name}"
        if order[-1] in partners:
            raise ServingConfigError(
                path,
                where,
                f"must end in a local route (the sovereign model), not partner {order[-1]!r}",
            )
        if name in partners:
            raise ServingConfigError(path, where, f"{name!r} is also a partner name")
        routes[name] = list(order)
    return routes
