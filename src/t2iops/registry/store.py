"""Conditional writes under ``<registry>/<model_name>/``: one small interface, an S3 and a folder
implementation. The champion history, the pointer and retirement records all go through it.

* ``create(name, data)``: only when ``name`` does not exist (S3 ``If-None-Match: *``; in a folder a
  hard link of a complete temporary file, which fails when the name exists).
* ``replace(name, data, tag)``: only while ``name`` still has the tag we read (S3 ``If-Match``; in
  a folder the sha256 of the content, compared under ``flock``).

Every conditional write is read back and compared: on a store that ignores the headers that
narrows a race it cannot close (see docs/operations.md, section 6).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

from .. import storage
from ..hashing import bytes_digest
from .versions import RegistryError, model_root

LOCK = ".champion.lock"


class S3Store:
    def __init__(self, root: str, cfg: Any):
        self.root = root
        self.bucket, key = storage.split_s3(root)
        self.prefix = key.rstrip("/")
        self.cfg = cfg
        self.client = storage.s3_client(cfg)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read(self, name: str) -> Optional[tuple[bytes, str]]:
        from ..storage.client import named_errors

        try:
            with named_errors(self.client, "read", self.bucket, self._key(name)):
                obj = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
                return obj["Body"].read(), obj["ETag"]
        except FileNotFoundError:
            return None

    def _put(self, name: str, data: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            if code in ("NotImplemented", "501"):
                raise storage.StorageError(
                    f"s3://{self.bucket}/{self._key(name)}: this S3 store does not support conditional writes "
                    "(If-None-Match / If-Match), which the champion pointer needs"
                ) from None
            raise
        current = self.read(name)
        return current is not None and current[0] == data

    def create(self, name: str, data: bytes) -> bool:
        return self._put(name, data, IfNoneMatch="*")

    def replace(self, name: str, data: bytes, tag: Optional[str]) -> bool:
        return self._put(name, data, **({"IfMatch": tag} if tag else {"IfNoneMatch": "*"}))

    def remove(self, name: str, tag: str) -> bool:
        """Delete ``name`` if it still has ``tag``. S3 has no conditional delete everywhere: the
        tag is checked just before, which leaves a short window; a pointer removed in it is only
        ``missing``, which readers survive and the next move rewrites."""
        current = self.read(name)
        if current is None or current[1] != tag:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))
        return True

    def names(self, folder: str) -> list[str]:
        rels = storage.list_files(f"s3://{self.bucket}/{self._key(folder)}", self.cfg)
        return [rel for rel in rels if "/" not in rel]


class FolderStore:
    def __init__(self, root: str):
        self.root = Path(root)

    def read(self, name: str) -> Optional[tuple[bytes, str]]:
        try:
            data = (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder where a record belongs, a file where a folder belongs
            raise RegistryError(f"{self.root / name}: cannot be read as a registry record ({exc.strerror})") from None
        return data, bytes_digest(data)

    def _temporary(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        return tmp

    def create(self, name: str, data: bytes) -> bool:
        tmp = self._temporary(name, data)
        try:
            os.link(tmp, self.root / name)  # atomic, and refuses an existing name
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def replace(self, name: str, data: bytes, tag: Optional[str]) -> bool:
        with self._locked():
            current = self.read(name)
            if (current[1] if current else None) != tag:
                return False
            os.replace(self._temporary(name, data), self.root / name)
            return True

    def remove(self, name: str, tag: str) -> bool:
        with self._locked():
            current = self.read(name)
            if current is None or current[1] != tag:
                return False
            (self.root / name).unlink()
            return True

    def names(self, folder: str) -> list[str]:
        path = self.root / folder
        return sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []


def open_store(registry_uri: str, model_name: str, cfg: Any):
    root = model_root(registry_uri, model_name)
    return S3Store(root, cfg) if storage.is_s3(root) else FolderStore(root)
