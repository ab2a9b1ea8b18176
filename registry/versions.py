"""Registering a model artifact as a version of ``sovereign-lm``, and fetching one back.

``register_version`` logs the evaluation metrics and the training summary to an MLflow
run, logs the artifact as a pyfunc "model from code" (``pyfunc_model.py``) with the
Hugging Face directory attached, registers it, tags it with lineage and the gate verdict,
and points ``challenger`` at it when the gate passed. A version that failed the gate is
still registered (the record of what was tried and why it was refused) but no alias ever
points at it.

Idempotent: the artifact's digest is a version tag, and registering the same artifact
again finds that version instead of creating a second one; the tags and alias are then
(re)applied, so a registration that crashed halfway is completed by running it again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from registry.client import RegistryClient
from registry.lineage import Lineage, model_digest
from registry.promotion import set_challenger
from registry.tags import set_version_tags

if TYPE_CHECKING:  # keeps torch out of the CLI's and the promotion path's imports
    from evaluation.report import EvaluationReport

_PYFUNC_SOURCE = Path(__file__).with_name("pyfunc_model.py")  # never imported here: MLflow runs it
MODEL_DIR_ARTIFACT = "model_dir"  # the artifact name pyfunc_model.py loads
# Declared so that ``max_new_tokens`` is accepted at predict time (MLflow drops undeclared params).
_SIGNATURE = infer_signature(["Q: sort 3 1 2 A:"], [" 1 2 3"], params={"max_new_tokens": 32})
# MLflow's advice when a model is logged (its text starts with a colour code, hence ``.*``)
_SIGNATURE_ADVICE = r".*(Add type hints to the `predict` method|An input example was not provided)"
_REQUIREMENTS = ["mlflow", "torch", "transformers", "tokenizers", "safetensors"]


@dataclass(frozen=True)
class RegisteredVersion:
    version: str
    run_id: str
    created: bool  # False when this artifact was already registered
    gate_passed: bool


def gate_tags(report: EvaluationReport) -> dict[str, str]:
    tags = {
        "gate.passed": "true" if report.decision.passed else "false",
        "gate.reasons": "\n".join(report.decision.reasons)[:4000],
        "gate.champion_version": report.champion_version or "none",
        "eval.data_version": str(report.data_version),
        "eval.examples": str(report.examples),
        "eval.suites": ",".join(report.suites) or "none",
        "gate.verdict": report.decision.verdict,
        "gate.basis": report.decision.basis,
        "gate.inconclusive_policy": report.decision.config.inconclusive_policy,
        "gate.evidence": report.decision.evidence()[:4000],
    }
    test = report.decision.comparison
    if test is not None:
        tags.update(
            {
                "gate.effect": f"{test.loss:.6g}",
                "gate.ci_low": f"{test.low:.6g}",
                "gate.ci_high": f"{test.high:.6g}",
                "gate.margin": f"{test.margin:.6g}",
                "gate.n": str(test.n),
                "gate.confidence": f"{test.confidence:.6g}",
            }
        )
    tags.update({f"eval.{k}": f"{v:.6g}" for k, v in report.challenger.as_dict().items()})
    return tags


def _ensure_registered_model(client: RegistryClient) -> None:
    name = client.config.model_name
    try:
        client.call("get_registered_model", client.mlflow.get_registered_model, name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.call("create_registered_model", client.mlflow.create_registered_model, name)
        except MlflowException as race:  # another registration created it meanwhile
            if race.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def _experiment_id(client: RegistryClient) -> str:
    cfg = client.config
    found = client.call(
        "get_experiment_by_name", client.mlflow.get_experiment_by_name, cfg.experiment
    )
    if found is not None:
        return found.experiment_id
    location = None if cfg.is_http or not cfg.artifact_root else Path(cfg.artifact_root).as_uri()
    try:
        return client.call(
            "create_experiment", client.mlflow.create_experiment, cfg.experiment, location
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.mlflow.get_experiment_by_name(cfg.experiment).experiment_id


def find_version_by_digest(client: RegistryClient, digest: str) -> str | None:
    name = client.config.model_name
    found = client.call(
        "search_model_versions",
        client.mlflow.search_model_versions,
        f"name = '{name}' and tags.`{Lineage.tag('model_sha256')}` = '{digest}'",
    )
    return min((mv.version for mv in found), key=int, default=None)


def _run_tags(lineage: Lineage):
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in lineage.tags().items()]


def _training_run(client: RegistryClient, model_dir: Path) -> str | None:
    """The MLflow run the trainer logged to (``mlflow_run.json`` beside the model), if it
    lives in this registry's tracking store; evaluation and the model then join that run."""
    state = model_dir.parent / "mlflow_run.json"
    if not state.is_file():
        return None
    run_id = json.loads(state.read_text()).get("run_id")
    if not run_id:
        return None
    try:
        client.call("get_run", client.mlflow.get_run, run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return run_id


_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def fluent_uris(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``start_run``, ``log_model``) at ``uri`` for one block.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export ``MLFLOW_TRACKING_URI`` /
    ``MLFLOW_REGISTRY_URI`` into ``os.environ``, so every process started afterwards (a
    torchrun launch, a serving engine) would silently inherit this store. Both the fluent
    URIs and the environment are put back as they were.
    """
    saved = {key: os.environ.get(key) for key in _URI_VARS}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _log_run(client: RegistryClient, model_dir: Path, report: EvaluationReport, lineage: Lineage):
    """Log params, metrics and the model to the training run (or a new run when the trainer
    logged to no MLflow run here); return (run_id, model_uri)."""
    summary_path = model_dir / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    params = {f"train.{k}": str(v)[:500] for k, v in summary.items() if not isinstance(v, dict)}
    with fluent_uris(client.config.tracking_uri):
        run_id = _training_run(client, model_dir)
        if run_id is None:
            run = client.call(
                "create_run", client.mlflow.create_run, _experiment_id(client), tags=lineage.tags()
            )
            run_id = run.info.run_id
        else:
            client.call("set_tags", client.mlflow.log_batch, run_id, tags=_run_tags(lineage))
        with mlflow.start_run(run_id=run_id):
            client.call("log_params", mlflow.log_params, params)
            client.call("log_metrics", mlflow.log_metrics, report.metrics())
            client.call("log_text", mlflow.log_text, report.markdown(), "evaluation.md")
            with warnings.catch_warnings():
                # The signature is given (_SIGNATURE), so MLflow's advice to infer one from type
                # hints or an input example does not apply; it would print on every registration.
                warnings.filterwarnings("ignore", message=_SIGNATURE_ADVICE, category=UserWarning)
                info = client.call(
                    "log_model",
                    mlflow.pyfunc.log_model,
                    name="model",
                    python_model=str(_PYFUNC_SOURCE),
                    artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
                    pip_requirements=_REQUIREMENTS,
                    signature=_SIGNATURE,
                )
    return run_id, info.model_uri


def register_version(
    client: RegistryClient,
    model_dir: Path,
    report: EvaluationReport,
    lineage: Lineage,
    actor: str = "registry",
) -> RegisteredVersion:
    """Register ``model_dir`` (evaluated in ``report``) and set ``challenger`` if it passed;
    ``actor`` (who registers) goes to the alias history with that move."""
    model_dir = Path(model_dir)
    _ensure_registered_model(client)
    name = client.config.model_name
    version = find_version_by_digest(client, lineage.model_sha256)
    created = version is None
    if created:
        run_id, model_uri = _log_run(client, model_dir, report, lineage)
        # The client call, not mlflow.register_model: the model exists already
        # (_ensure_registered_model), and the fluent call would print that it does. MLflow
        # resolves the `models:/<id>` source through the global tracking URI, hence the block.
        with fluent_uris(client.config.tracking_uri):
            mv = client.call(
                "create_model_version",
                client.mlflow.create_model_version,
                name,
                model_uri,
                tags=lineage.tags(),
                model_id=model_uri.removeprefix("models:/"),
            )
        version = mv.version
    else:
        run_id = client.call(
            "get_model_version", client.mlflow.get_model_version, name, version
        ).run_id
    set_version_tags(client, str(version), {**lineage.tags(), **gate_tags(report)})
    if report.decision.passed:
        set_challenger(client, str(version), actor, {"gate": gate_tags(report)})
    return RegisteredVersion(
        version=str(version), run_id=run_id, created=created, gate_passed=report.decision.passed
    )


def download_model_dir(client: RegistryClient, ref: str, dst: Path) -> Path:
    """Download the Hugging Face directory of ``ref`` (an alias or a version number)."""
    name = client.config.model_name
    uri = f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"
    version = ref
    if not ref.isdigit():
        found = client.call(
            "get_model_version_by_alias", client.mlflow.get_model_version_by_alias, name, ref
        )
        version = str(found.version)
    # Resolve through our client: a `models:/` URI handed to download_artifacts would be
    # looked up in the process-wide registry URI, not the one this client is configured with.
    source = client.call(
        "get_model_version_download_uri",
        client.mlflow.get_model_version_download_uri,
        name,
        version,
    )
    dst.mkdir(parents=True, exist_ok=True)
    local = client.call(
        "download_artifacts",
        mlflow.artifacts.download_artifacts,
        artifact_uri=source,
        dst_path=str(dst),
        tracking_uri=client.config.tracking_uri,
    )
    matches = sorted(Path(local).glob("**/config.json"))
    if not matches:
        raise FileNotFoundError(f"{uri} downloaded to {local} holds no Hugging Face config.json")
    return matches[0].parent


class ModelIntegrityError(RuntimeError):
    """A downloaded model directory does not match the digest its version was registered with."""


def _hf_dir(root: Path) -> Path | None:
    found = sorted(root.glob("**/config.json")) if root.is_dir() else []
    return found[0].parent if found else None


def fetch_model_dir(client: RegistryClient, version: str, models_root: Path) -> Path:
    """The Hugging Face directory of ``version`` under ``models_root/<version>``."""
    expected = Lineage.from_tags(client.version_tags(version)).model_sha256
    target = models_root / version
    existing = _hf_dir(target)
    if existing is not None and (not expected or model_digest(existing) == expected):
        return existing
    models_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=models_root))
    try:
        fetched = download_model_dir(client, version, staging)
        if expected and model_digest(fetched) != expected:
            raise ModelIntegrityError(
                f"version {version} downloaded to {fetched} has digest "
                f"{model_digest(fetched)}, but lineage.model_sha256 is {expected}; the artifact "
                "store holds a different or damaged copy: re-register the model"
            )
        inner = fetched.relative_to(staging)
        if target.exists():  # a damaged copy; nothing can be serving a wrong digest for long
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / inner
