"""Local paths and ``s3://bucket/prefix`` URIs behind one small API.

* Credentials come from boto3's standard chain (env vars, shared profile, IRSA web identity);
  ``storage.endpoint_url`` (or the standard ``AWS_ENDPOINT_URL`` env var) points at an
  S3-compatible store. Every call has connect/read timeouts and a retry deadline
  (``storage.connect_timeout``, ``storage.read_timeout``, ``storage.retry_deadline``), and every
  error names endpoint, bucket and key (:mod:`.client`).
* Publishing is atomic (:mod:`.publishing`): :func:`publish` hands out a local staging folder;
  when the block exits without error the output appears whole. On S3 the files go to immutable
  versioned keys and ``_manifest.json`` (naming the version; file list, sizes, sha256) is written
  last with a conditional PUT; locally the fsynced staging folder is renamed into place. When the
  block raises, nothing is published.
* Readers (:func:`materialize`, :func:`read_bytes`, :func:`list_files`, :func:`download_dir`)
  see a published output through its manifest and verify sizes and sha256 (``storage.verify``).
* No key or link leads outside its destination (:class:`UnsafePath`).
"""
from __future__ import annotations

from .client import s3_client, storage_settings
from .materialize import cache_root, file_lock, materialize
from .objects import (delete, download_dir, exists, list_files, read_bytes, read_text, upload_dir,
                      write_bytes)
from .publishing import download_listed, is_published, publish, read_manifest, sha256_file
from .uris import (MANIFEST, VERSIONS, ConcurrentPublish, IntegrityError, NotPublished, StorageError, UnsafePath,
                   check_links_inside, is_s3, join, safe_target, split_s3)

__all__ = [
    "MANIFEST", "VERSIONS", "StorageError", "NotPublished", "UnsafePath", "IntegrityError", "ConcurrentPublish",
    "is_s3", "split_s3", "join", "safe_target", "check_links_inside", "s3_client", "storage_settings", "cache_root",
    "file_lock", "materialize", "list_files", "exists", "read_bytes", "read_text", "write_bytes", "delete",
    "upload_dir", "download_dir", "sha256_file", "publish", "read_manifest", "download_listed", "is_published",
]
