"""A generation shard's files in durable storage, copied there as they are written.

A Kubeflow task writes its output artifact to a local folder that the launcher
uploads only once the task succeeds; a preempted GPU pod loses whatever it had
written. With ``--durable_output_uri`` (the artifact's own remote URI in the
pipeline) every finished file is also copied there at once, and a restarted
shard first fetches the files it finds there, so it skips them.

The location is anything :func:`pyarrow.fs.FileSystem.from_uri` opens (``s3://``,
``gs://``, ``hdfs://``, ``file://``, a local path); ``minio://`` and ``s3a://``
are read as ``s3://`` (Kubeflow's MinIO store), with the endpoint from
``--durable_s3_endpoint`` or ``AWS_ENDPOINT_URL`` and the credentials from the
usual AWS environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


class DurableStoreError(RuntimeError):
    """The durable location cannot be opened, listed or written."""


def open_location(uri: str, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of ``uri``.

    Raises:
        DurableStoreError: an unsupported scheme or an unreachable store.
    """
    parsed = urlparse(uri)
    try:
        if parsed.scheme in ("minio", "s3a", "s3"):
            endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
            scheme = "http" if endpoint and endpoint.startswith("http://") else "https"
            override = endpoint.split("://", 1)[-1] if endpoint else None
            fs = pafs.S3FileSystem(endpoint_override=override, scheme=scheme)
            return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
        if parsed.scheme == "":
            return pafs.LocalFileSystem(), str(Path(uri).resolve())
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        raise DurableStoreError(f"cannot open durable location {uri!r}: {str(exc).splitlines()[0]}") from exc


class DurableCopy:
    """Mirrors the files of one local folder into a durable location, file by file.

    Args:
        uri: the durable location that corresponds to ``local_root``.
        local_root: the local folder (the task's output folder).
        s3_endpoint: endpoint for ``minio://``/``s3a://``/``s3://`` locations.
    """

    def __init__(self, uri: str, local_root: str | os.PathLike, s3_endpoint: str | None = None):
        self.uri = uri
        self.local_root = Path(local_root).resolve()
        self.fs, self.base = open_location(uri, s3_endpoint)

    @property
    def is_local_folder_itself(self) -> bool:
        """True when the location is the local folder (``kfp.local``): nothing to copy."""
        return isinstance(self.fs, pafs.LocalFileSystem) and Path(self.base) == self.local_root

    def fetch(self, relative_folder: str, prefix: str) -> list[str]:
        """Copy into the local folder the finished files of ``relative_folder`` whose names start with
        ``prefix`` and that are not there yet; returns the names fetched (hidden temp names are ignored).

        Raises:
            DurableStoreError: the location cannot be listed or read.
        """
        if self.is_local_folder_itself:
            return []
        selector = pafs.FileSelector(f"{self.base}/{relative_folder}", allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise DurableStoreError(f"cannot list {self.uri}/{relative_folder}: {exc}") from exc
        fetched = []
        target_dir = self.local_root / relative_folder
        target_dir.mkdir(parents=True, exist_ok=True)
        for info in sorted(infos, key=lambda i: i.base_name):
            name = info.base_name
            if info.type != pafs.FileType.File or not name.startswith(prefix) or name.startswith("."):
                continue
            target = target_dir / name
            if target.is_file():
                continue
            tmp = target.with_name(f".{name}.fetch-{os.getpid()}")
            try:
                with self.fs.open_input_stream(info.path) as src, tmp.open("wb") as dst:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise DurableStoreError(f"cannot read {self.uri}/{relative_folder}/{name}: {exc}") from exc
            os.replace(tmp, target)
            fetched.append(name)
        return fetched

    def publish(self, local_file: str | os.PathLike) -> None:
        """Copy one finished local file to the same relative place in the durable location.

        It is written under a hidden temp name and moved into place, so a pod killed mid-copy never leaves
        a file that looks finished (an object store's move is a copy then a delete).

        Raises:
            DurableStoreError: the location cannot be written.
        """
        if self.is_local_folder_itself:
            return
        relative = Path(local_file).resolve().relative_to(self.local_root).as_posix()
        target = f"{self.base}/{relative}"
        parent, _, name = target.rpartition("/")
        tmp = f"{parent}/.{name}.tmp-{os.getpid()}"
        try:
            self.fs.create_dir(parent, recursive=True)
            with Path(local_file).open("rb") as src, self.fs.open_output_stream(tmp) as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            self.fs.move(tmp, target)
        except OSError as exc:
            raise DurableStoreError(f"cannot write {self.uri}/{relative}: {exc}") from exc
