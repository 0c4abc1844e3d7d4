"""Upload a compiled pipeline to a Kubeflow host, or run it in an experiment, with typed parameters."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cehrgpt.redaction import has_password, redact


class SubmitError(RuntimeError):
    """A compiled pipeline, a parameter or the Kubeflow host is not what was expected."""


_PARSERS = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
}


def pipeline_inputs(package: Mapping[str, Any]) -> dict[str, str]:
    """``{parameter: IR type}`` of a compiled pipeline (``NUMBER_INTEGER``, ``STRING``, ``STRUCT`` …)."""
    parameters = package.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {name: spec.get("parameterType", "STRING") for name, spec in parameters.items()}


def load_package(path: Path) -> dict[str, Any]:
    """The pipeline spec of a compiled YAML (its first document).

    Raises:
        SubmitError: the file is missing or is not a compiled pipeline.
    """
    if not path.is_file():
        raise SubmitError(f"compiled pipeline {str(path)!r} does not exist (run `cehrgpt pipeline compile`)")
    try:
        document = next(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as e:
        raise SubmitError(f"{str(path)!r} is not YAML: {e}") from None
    if not isinstance(document, dict) or "pipelineInfo" not in document or "root" not in document:
        raise SubmitError(f"{str(path)!r} is not a compiled Kubeflow pipeline (no pipelineInfo/root)")
    return document


def parse_params(pairs: Sequence[str], inputs: Mapping[str, str]) -> dict[str, Any]:
    """``["k=v", …]`` → ``{k: v}`` typed by the pipeline's input types.

    Raises:
        SubmitError: a pair without ``=``, an unknown parameter, a value of the wrong type, or a value
            holding a password (Kubeflow stores and shows parameters; passwords go in a Secret).
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise SubmitError(f"--param {redact(pair)!r} is not of the form name=value")
        if has_password(raw):
            raise SubmitError(
                f"parameter {name} holds a password ({redact(raw)}), which Kubeflow stores and shows; give "
                "the URL without it and the password in the pipeline's Secret (key password)"
            )
        if name not in inputs:
            raise SubmitError(f"unknown parameter {name!r}: expected one of {', '.join(sorted(inputs))}")
        kind = inputs[name]
        try:
            if kind in _PARSERS:
                params[name] = _PARSERS[kind](raw)
            elif kind == "BOOLEAN":
                if raw.lower() not in ("true", "false"):
                    raise ValueError(raw)
                params[name] = raw.lower() == "true"
            else:
                value = json.loads(raw)
                expected = dict if kind == "STRUCT" else list
                if not isinstance(value, expected):
                    raise ValueError(raw)
                params[name] = value
        except ValueError:
            raise SubmitError(f"parameter {name}={redact(raw)!r} is not a valid {kind}") from None
    return params


def submit(
    package_path: Path,
    host: str,
    params: Sequence[str] = (),
    experiment: str = "cehrgpt",
    run_name: str | None = None,
    namespace: str | None = None,
    upload_only: bool = False,
    pipeline_name: str | None = None,
    version_name: str | None = None,
    token: str | None = None,
    client: Any = None,
) -> dict[str, str]:
    """Run a compiled pipeline in an experiment, or only upload it as a pipeline (a new version if it exists).

    Args:
        package_path: A file written by ``cehrgpt pipeline compile``.
        host: The Kubeflow Pipelines API endpoint.
        params: ``name=value`` pairs, checked and typed against the pipeline's inputs.
        experiment: Experiment the run goes into (created if missing).
        run_name: Display name of the run (default: the pipeline's name).
        namespace: Kubeflow profile namespace (multi-user installations).
        upload_only: Upload the pipeline instead of running it.
        pipeline_name: Name of the uploaded pipeline (default: the pipeline's own).
        version_name: Name of the new version when the pipeline exists (default: the pipeline's name and
            a hash of the YAML); CI names it after the commit.
        token: A bearer token for the host (e.g. a service-account token), sent as ``Authorization``.
        client: A ``kfp.Client`` (made from ``host`` by default).

    Returns:
        ``{"run_id": …}`` or ``{"pipeline_id": …}`` (and ``version_id`` for a new version).

    Raises:
        SubmitError: a bad package or parameter, or the host refused.
    """
    package = load_package(package_path)
    arguments = parse_params(params, pipeline_inputs(package))
    name = pipeline_name or package["pipelineInfo"]["name"]
    if client is None:
        import kfp

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This client only works with", FutureWarning)
            client = kfp.Client(host=host, namespace=namespace, existing_token=token or None)
    try:
        if upload_only:
            existing = client.get_pipeline_id(name)
            if existing:
                version = client.upload_pipeline_version(
                    str(package_path),
                    pipeline_version_name=version_name or f"{name}-{_digest(package_path)}",
                    pipeline_id=existing,
                )
                return {"pipeline_id": existing, "version_id": version.pipeline_version_id}
            uploaded = client.upload_pipeline(str(package_path), pipeline_name=name)
            return {"pipeline_id": uploaded.pipeline_id}
        result = client.create_run_from_pipeline_package(
            str(package_path),
            arguments=arguments,
            run_name=run_name or name,
            experiment_name=experiment,
            namespace=namespace,
        )
        return {"run_id": result.run_id}
    except SubmitError:
        raise
    except Exception as e:  # kfp_server_api raises ApiException; connection errors come from urllib3
        status = getattr(e, "status", None)
        reason = getattr(e, "reason", None) or type(e).__name__
        raise SubmitError(
            f"Kubeflow host {host} refused the request: {status or ''} {reason}".replace("  ", " ")
        ) from None


def _digest(path: Path) -> str:
    """A short content hash: uploading the same YAML twice names the same version."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
