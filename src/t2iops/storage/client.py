"""The boto3 client: timeouts, a retry deadline, and errors that name endpoint, bucket and key.

Failure bound: one S3 call gives up once ``storage.retry_deadline`` seconds have passed since its
first attempt, at the next failed attempt. The worst case for a call is therefore
``retry_deadline + 20 s`` (botocore's longest back-off) ``+ connect_timeout + read_timeout``:
45 + 20 + 5 + 20 = 90 s with the defaults. A stage stops at its first failed call, so with the
store down for good every stage fails within that bound (≤ 120 s) and publishes nothing.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Any, Iterator

from ..redact import redact_text, redact_url
from .uris import StorageError

CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")


@functools.lru_cache(maxsize=1)
def _storage_defaults() -> dict:
    from ..config import StorageConfig  # the schema is the one place storage defaults live

    return StorageConfig().model_dump()


def storage_settings(cfg: Any) -> dict:
    """Accept a StorageConfig, a full Config (or a stage's view of one) or None: the settings as a
    dict, with the schema's defaults for None and for any setting ``cfg`` lacks."""
    storage = getattr(cfg, "storage", cfg) if cfg is not None else None
    s = {name: getattr(storage, name, default) for name, default in _storage_defaults().items()}
    for name in ("connect_timeout", "read_timeout", "retry_deadline", "multipart_threshold_mb", "multipart_chunk_mb"):
        s[name] = float(s[name])
    for name in ("max_concurrency", "part_concurrency"):
        s[name] = int(s[name])
    s["verify"] = bool(s["verify"])
    return s


def s3_client(cfg: Any = None):
    """A boto3 S3 client for these settings. Clients are cached per settings and per the
    credential-related environment (creating one costs about a second on a busy machine)."""
    s = storage_settings(cfg)
    env_key = tuple(os.environ.get(k) for k in CREDENTIAL_ENV)
    # Every object of a prefix copy, and every range of each large one, may hold a connection.
    pool = min(512, max(64, s["max_concurrency"] * s["part_concurrency"]))
    return _cached_client(s["endpoint_url"], s["region"], s["max_attempts"], s["connect_timeout"],
                          s["read_timeout"], s["retry_deadline"], pool, env_key, os.getpid())


@functools.lru_cache(maxsize=32)
def _cached_client(endpoint_url, region, max_attempts, connect_timeout, read_timeout, retry_deadline, pool, _env,
                   _pid):
    import boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(
        retries={"max_attempts": max_attempts, "mode": "adaptive"},
        max_pool_connections=pool,  # parallel prefix copies share one client
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    kwargs: dict[str, Any] = {"config": config}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if region:
        kwargs["region_name"] = region
    client = boto3.session.Session().client("s3", **kwargs)
    _install_deadline(client, retry_deadline)
    return client


class RetryDeadlineExceeded(Exception):
    pass


def _install_deadline(client, deadline: float) -> None:
    """Stop botocore's retries of one call once ``deadline`` seconds have passed."""

    def note_start(context=None, **_):
        if context is not None:
            context.setdefault("t2iops_started", time.monotonic())

    def give_up(attempts=0, caught_exception=None, response=None, request_dict=None, **_):
        failed = caught_exception is not None or (response is not None and response[0].status_code >= 500)
        started = ((request_dict or {}).get("context") or {}).get("t2iops_started")
        if not failed or started is None:
            return None
        elapsed = time.monotonic() - started
        if elapsed >= deadline:
            cause = caught_exception or f"HTTP {response[0].status_code}"
            raise RetryDeadlineExceeded(
                f"gave up after {attempts} attempts in {elapsed:.1f} s (storage.retry_deadline={deadline:g} s): {cause}"
            )
        return None

    client.meta.events.register("before-call.s3", note_start)
    client.meta.events.register_first("needs-retry.s3", give_up)


def endpoint_of(client) -> str:
    return redact_url(getattr(client.meta, "endpoint_url", "") or "default AWS endpoint")


def is_missing(exc: BaseException) -> bool:
    """A 404 / NoSuchKey from any S3 call."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("NoSuchKey", "404", "NotFound") or status == 404


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _sdk_errors() -> tuple[type, ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, Boto3Error, RetryDeadlineExceeded, ConnectionError, TimeoutError)


# What to set when the store cannot be used at all: said by every storage error of that kind.
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; in a pod, its service "
                    "account's role), and storage.endpoint_url (or AWS_ENDPOINT_URL) for an S3-compatible store")
ENDPOINT_HINT = "check storage.endpoint_url (or AWS_ENDPOINT_URL) and that the store is up"


class StorageSetupError(StorageError):
    """The store cannot be used as configured (no credentials, no such bucket): a configuration
    error, so nothing was done (exit 2)."""

    exit_code = 2


def _missing_credentials(exc: BaseException) -> bool:
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    return isinstance(exc, (NoCredentialsError, PartialCredentialsError)) or error_code(exc) in (
        "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")


def _unreachable(exc: BaseException) -> bool:
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    text = str(exc)
    return isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ConnectionError)) or (
        isinstance(exc, RetryDeadlineExceeded) and ("Could not connect" in text or "Connect timeout" in text))


@contextlib.contextmanager
def named_errors(client, action: str, bucket: str, key: str = "") -> Iterator[None]:
    """Turn SDK errors into :class:`StorageError` (or FileNotFoundError for a missing key) whose
    message names the endpoint, bucket and key, and for a store that cannot be used at all (no
    credentials, no such bucket, endpoint unreachable) what to set."""
    try:
        yield
    except _sdk_errors() as exc:
        endpoint = endpoint_of(client)
        where = f"s3://{bucket}/{key} (bucket {bucket!r}, key {key!r}, endpoint {endpoint})"
        cause = redact_text(str(exc))
        if error_code(exc) == "NoSuchBucket":
            raise StorageSetupError(f"cannot {action} {where}: bucket {bucket!r} does not exist at endpoint "
                                    f"{endpoint}; check the bucket name and storage.endpoint_url") from None
        if is_missing(exc):
            raise FileNotFoundError(f"{where} does not exist") from None
        if _missing_credentials(exc):
            raise StorageSetupError(f"cannot {action} {where}: no usable AWS credentials ({cause}); "
                                    f"{CREDENTIALS_HINT}") from None
        if error_code(exc) in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
            raise StorageError(f"cannot {action} {where}: access denied ({cause}); the credentials in use "
                               f"(AWS_ACCESS_KEY_ID / AWS_PROFILE) lack permission on bucket {bucket!r}") from None
        if _unreachable(exc):
            raise StorageError(f"cannot {action} {where}: endpoint {endpoint} cannot be reached ({cause}); "
                               f"{ENDPOINT_HINT}") from None
        raise StorageError(f"cannot {action} {where}: {cause}") from None
