"""Read-only access to a pipeline root: a local folder, Google Cloud Storage, or S3/MinIO.

``compare`` and the restore step read small JSON files (Metrics artifacts,
reports) from wherever Kubeflow wrote them; this is the one place that knows
how to list and read there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse


class StoreError(RuntimeError):
    """A pipeline-root location cannot be listed or read."""


class Store(Protocol):
    """Files under one root, named by their path relative to it (always with ``/``)."""

    def list_files(self) -> list[str]: ...

    def read_bytes(self, relative: str) -> bytes: ...


@dataclass
class LocalStore:
    root: Path

    def list_files(self) -> list[str]:
        if not self.root.is_dir():
            raise StoreError(f"run folder {str(self.root)!r} does not exist or is not a folder")
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())

    def read_bytes(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()


@dataclass
class GCSStore:
    bucket: str
    prefix: str
    client: Any

    def list_files(self) -> list[str]:
        prefix = self.prefix.rstrip("/") + "/" if self.prefix else ""
        names = [b.name for b in self.client.list_blobs(self.bucket, prefix=prefix)]
        return sorted(n[len(prefix) :] for n in names if not n.endswith("/"))

    def read_bytes(self, relative: str) -> bytes:
        key = f"{self.prefix.rstrip('/')}/{relative}" if self.prefix else relative
        return self.client.bucket(self.bucket).blob(key).download_as_bytes()


@dataclass
class S3Store:
    bucket: str
    prefix: str
    client: Any

    def list_files(self) -> list[str]:
        prefix = self.prefix.rstrip("/") + "/" if self.prefix else ""
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(k[len(prefix) :] for k in keys if not k.endswith("/"))

    def read_bytes(self, relative: str) -> bytes:
        key = f"{self.prefix.rstrip('/')}/{relative}" if self.prefix else relative
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


def open_store(
    location: str, s3_endpoint_url: str | None = None, gcs_endpoint_url: str | None = None
) -> Store:
    """The store for a local folder, ``gs://bucket/prefix``, or ``s3://``/``s3a://``/``minio://bucket/prefix``.

    Args:
        location: Where a run's artifacts are.
        s3_endpoint_url: S3-compatible endpoint (MinIO), else ``AWS_ENDPOINT_URL`` or AWS itself.
        gcs_endpoint_url: Another GCS JSON API endpoint (an emulator), else Google's.

    Raises:
        StoreError: an unknown scheme.
    """
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.path if parsed.scheme else location))
    if parsed.scheme == "gs":
        from google.cloud import storage

        if gcs_endpoint_url:
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(
                project="cehrgpt",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": gcs_endpoint_url},
            )
        else:
            client = storage.Client()
        return GCSStore(parsed.netloc, parsed.path.lstrip("/"), client)
    if parsed.scheme in ("s3", "s3a", "minio"):
        import boto3

        endpoint = s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        client = boto3.client("s3", endpoint_url=endpoint)
        return S3Store(parsed.netloc, parsed.path.lstrip("/"), client)
    raise StoreError(
        f"unsupported location {location!r}: expected a folder, gs://, s3://, s3a:// or minio://"
    )
