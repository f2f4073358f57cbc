"""The artifact store: one interface over s3:// (boto3) and file:// roots.

A `Store` is rooted at a URI; keys are '/'-separated paths relative to that root. Every write
is atomic (a reader sees the whole object or nothing), `put_if_absent` is an atomic create (the
basis of stage commits, see `evoquality.artifacts`), and nothing is ever deleted: there is no
delete method.

S3 credentials come from the standard AWS environment variables; the endpoint from the
`endpoint_url` argument or `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`. Throttling and 5xx answers
are retried by botocore (`AWS_RETRY_MODE`, default "standard"; `AWS_MAX_ATTEMPTS`, default 10).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

_TMP_PREFIX = ".evoq-tmp-"
_MULTIPART_BYTES = 8 * 1024 * 1024
_CONFLICT_RETRIES = 5


class StoreError(RuntimeError):
    """A store operation failed; the message names the URI and the reason."""


class NotFound(StoreError, FileNotFoundError):
    """The key (or prefix) does not exist."""


def check_key(key: str, *, prefix: bool = False) -> str:
    """Return `key` if it is a clean relative key; a prefix may be empty or end with '/'."""
    body = key[:-1] if prefix and key.endswith("/") else key
    if prefix and body == "":
        return key
    if not body or body.startswith("/") or "\\" in body:
        raise StoreError(f"invalid key {key!r}: keys are non-empty relative '/'-separated paths")
    if any(part in ("", ".", "..") for part in body.split("/")):
        raise StoreError(f"invalid key {key!r}: empty, '.' or '..' path component")
    return key


def _dir_prefix(prefix: str) -> str:
    """A prefix that names a folder: '' stays '', otherwise it ends with exactly one '/'."""
    check_key(prefix, prefix=True)
    return prefix if prefix == "" or prefix.endswith("/") else prefix + "/"


class Store(ABC):
    """A key/value object store rooted at `uri`. Subclasses implement the primitive operations."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises `NotFound` when it does not exist."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Sorted keys (relative to the root) that start with `prefix` (a plain string prefix)."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Atomically create `key`; False (and nothing written) when it already existed."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download `key` to `path` (parents created; the file appears atomically)."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The real local path of a key or folder prefix in a file store (it may not exist yet);
        None for S3."""

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """A store rooted at `prefix` under this one."""

    def uri_for(self, key: str) -> str:
        """The full URI of `key` (or of a folder prefix ending in '/')."""
        return f"{self.uri.rstrip('/')}/{check_key(key, prefix=True)}"

    def put_dir(self, prefix: str, directory: Path) -> list[str]:
        """Upload every file below `directory` to `prefix/<relative path>`; returns the keys."""
        prefix = _dir_prefix(prefix)
        directory = Path(directory)
        if not directory.is_dir():
            raise StoreError(f"cannot upload {directory}: not a directory")
        keys = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(directory).as_posix()
            self.put_file(key, path)
            keys.append(key)
        return keys

    def get_dir(self, prefix: str, directory: Path) -> list[Path]:
        """Download every object under `prefix/` into `directory`; NotFound when there is none."""
        prefix = _dir_prefix(prefix)
        keys = self.list(prefix)
        if not keys:
            raise NotFound(f"no objects under {self.uri.rstrip('/')}/{prefix}")
        paths = []
        for key in keys:
            path = Path(directory) / key[len(prefix) :]
            self.get_file(key, path)
            paths.append(path)
        return paths

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# --------------------------------------------------------------------------- file://


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_beside(path: Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder (created), removed afterwards unless renamed away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class FileStore(Store):
    """A store in a local folder. Writes go to a temporary file that is then renamed into place."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with _temp_beside(path) as tmp:
            _write_synced(tmp, data)
            os.replace(tmp, path)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{self.uri_for(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        check_key(prefix, prefix=True)
        folder = self.root / prefix.rpartition("/")[0]
        if not folder.is_dir():
            return []
        keys = (
            p.relative_to(self.root).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(_TMP_PREFIX)
        )
        return sorted(k for k in keys if k.startswith(prefix))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with _temp_beside(path) as tmp:
            _write_synced(tmp, data)
            try:
                os.link(tmp, path)  # atomic create: fails if `path` exists
            except FileExistsError:
                return False
        _fsync_dir(path.parent)
        return True

    def put_file(self, key: str, path: Path) -> None:
        self._copy(Path(path), self._path(key), source_uri=str(path))

    def get_file(self, key: str, path: Path) -> None:
        self._copy(self._path(key), Path(path), source_uri=self.uri_for(key))

    @staticmethod
    def _copy(src: Path, dest: Path, source_uri: str) -> None:
        if not src.is_file():
            raise NotFound(f"{source_uri} does not exist")
        with _temp_beside(dest) as tmp:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)

    def local_path(self, key: str) -> Path:
        return self.root / check_key(key, prefix=True)

    def child(self, prefix: str) -> FileStore:
        return FileStore(self.root / check_key(prefix.rstrip("/")))


# --------------------------------------------------------------------------- s3://


def _error_code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


class S3Store(Store):
    """A store under `s3://bucket/prefix`. Large files use multipart transfers."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client or _make_client(endpoint_url)
        self._bucket_checked = False

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return self.endpoint_url or "the default AWS endpoint"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate botocore errors into StoreError / NotFound with a message naming `what`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as err:
            code = _error_code(err)
            if code == "NoSuchBucket":
                raise self._missing_bucket() from None
            if code in ("NoSuchKey", "404", "NotFound"):
                if code != "NoSuchKey":  # a HEAD's bare 404 may be about the bucket
                    self._check_bucket()
                raise NotFound(f"{what} does not exist") from None
            raise StoreError(f"{what}: S3 error {code or '?'} at {self._where()}: {err}") from err
        except BotoCoreError as err:
            raise StoreError(f"{what}: cannot talk to S3 at {self._where()}: {err}") from err

    def _missing_bucket(self) -> StoreError:
        return StoreError(f"bucket '{self.bucket}' does not exist at endpoint {self._where()}")

    def _check_bucket(self) -> None:
        """Raise the missing-bucket error if a 404 was really about the bucket (checked once)."""
        from botocore.exceptions import ClientError

        if self._bucket_checked:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as err:
            if _error_code(err) in ("404", "NoSuchBucket", "NotFound"):
                raise self._missing_bucket() from None
            # 403 and friends: the bucket exists or we may not ask; the key is what is missing.
        self._bucket_checked = True

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(f"writing {self.uri_for(key)}"):
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with self._errors(self.uri_for(key)):
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            with self._errors(self.uri_for(key)):
                self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        check_key(prefix, prefix=True)
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with self._errors(f"listing {self.uri}/{prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        what = f"creating {self.uri_for(key)}"
        for attempt in range(_CONFLICT_RETRIES):
            with self._errors(what):
                try:
                    self._client.put_object(
                        Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                    )
                    return True
                except ClientError as err:
                    code = _error_code(err)
                    if code == "PreconditionFailed":
                        return False
                    if code != "ConditionalRequestConflict":
                        raise
            # A concurrent conditional write is in flight: retry; the loser then sees 412.
            time.sleep(0.05 * 2**attempt)
        raise StoreError(f"{what}: conditional write still conflicting after retries")

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=_MULTIPART_BYTES,
            multipart_chunksize=_MULTIPART_BYTES,
            max_concurrency=int(os.environ.get("EVOQUALITY_S3_CONCURRENCY", "4")),
        )

    def put_file(self, key: str, path: Path) -> None:
        if not Path(path).is_file():
            raise NotFound(f"{path} does not exist")
        with self._errors(f"uploading {path} to {self.uri_for(key)}"):
            self._client.upload_file(
                str(path), self.bucket, self._key(key), Config=self._transfer_config()
            )

    def get_file(self, key: str, path: Path) -> None:
        path = Path(path)
        with _temp_beside(path) as tmp, self._errors(self.uri_for(key)):
            self._client.download_file(
                self.bucket, self._key(key), str(tmp), Config=self._transfer_config()
            )
            os.replace(tmp, path)

    def local_path(self, key: str) -> None:
        return None

    def child(self, prefix: str) -> S3Store:
        sub = check_key(prefix.strip("/"))
        full = f"{self.prefix}/{sub}" if self.prefix else sub
        return S3Store(self.bucket, full, self.endpoint_url, client=self._client)


def _make_client(endpoint_url: str | None):
    import boto3
    from botocore.config import Config

    config = Config(
        retries={
            "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
            "total_max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "10")),
        },
        # Custom endpoints (MinIO, moto, Ceph) generally need path-style addressing.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


# --------------------------------------------------------------------------- opening


def open_store(uri: str, endpoint_url: str | None = None) -> Store:
    """Open "s3://bucket/prefix", "file:///abs/path" or a plain local path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"invalid S3 URI {uri!r}: no bucket")
        endpoint = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        return S3Store(parsed.netloc, parsed.path, endpoint)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"invalid file URI {uri!r}: use file:///absolute/path")
        return FileStore(Path(parsed.path))
    if "://" in uri:
        raise StoreError(f"unsupported store URI {uri!r}: use s3://, file:// or a local path")
    return FileStore(Path(uri))


def split_uri(uri: str) -> tuple[str, str]:
    """Split an S3 URI, file URI or local path into (parent store URI or path, object name)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        head, _, name = parsed.path.strip("/").rpartition("/")
        if not name:
            raise StoreError(f"{uri!r} does not name an object (s3://bucket/key expected)")
        return f"s3://{parsed.netloc}/{head}".rstrip("/"), name
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif "://" in uri:
        raise StoreError(f"unsupported URI {uri!r}: use s3://, file:// or a local path")
    else:
        path = Path(uri).absolute()
    if not path.name:
        raise StoreError(f"{uri!r} does not name a file")
    return str(path.parent), path.name
