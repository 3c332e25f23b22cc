"""Keep credentials out of logs, errors and recorded artifacts.

Two tools: :func:`redact_url` for a URL we are about to record (lineage, manifests, log lines):
the userinfo (``user:token@``) and secret-looking query parameters become ``***``;
:func:`redact_text` for free text (exception messages, log records): URLs inside it are redacted
the same way, signed-request fragments (``X-Amz-Security-Token=``, ``Credential=``,
``Authorization:``) are cut, and the values of the credential environment variables are
replaced wherever they appear. :func:`install_logging_redaction` puts a filter doing this on
every handler of the root logger and caps the AWS SDK loggers (their debug output prints signed
headers) at INFO, so no verbosity shows a credential.
"""
from __future__ import annotations

import logging
import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Environment variables whose values are credentials (all AWS SDKs read these).
SECRET_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "GITHUB_TOKEN",
    "GIT_PASSWORD",
)
# Query parameters that carry a credential or a signature.
_SECRET_PARAM = re.compile(
    r"(?i)^(x-amz-security-token|x-amz-credential|x-amz-signature|signature|sig|token|access_token|"
    r"id_token|password|passwd|pwd|secret|client_secret|api_key|apikey|key|awsaccesskeyid|credential)$"
)
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_SIGNED = re.compile(
    r"(?i)(x-amz-security-token|x-amz-credential|x-amz-signature|aws_session_token|aws_secret_access_key|"
    r"aws_access_key_id|authorization|credential|signature)(['\"]?\s*[:=]\s*['\"]?)([^\s,'\"&}]+)"
)
# Loggers that print request headers (signatures, session tokens) at DEBUG.
SDK_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "aiobotocore", "s3fs", "fsspec")


def redact_url(url: str) -> str:
    """``url`` without its userinfo and without the values of secret-looking query parameters."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return _mask_env(text)
    if not parts.scheme or not parts.netloc:
        return _mask_env(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_PARAM.match(k) else v) for k, v in pairs], safe="*")
    return _mask_env(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def redact_text(text: str) -> str:
    """``text`` with URLs redacted, signed-request fragments cut and credential values masked."""
    out = _URL.sub(lambda m: redact_url(m.group(0)), str(text))
    out = _SIGNED.sub(lambda m: m.group(1) + m.group(2) + MASK, out)
    return _mask_env(out)


def _mask_env(text: str) -> str:
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 4:  # a one-letter "secret" would mask every word
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message through :func:`redact_text` (args are folded in first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


def install_logging_redaction(sdk_level: int = logging.INFO) -> None:
    """Filter every root handler and cap the SDK loggers at ``sdk_level`` (never DEBUG)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(max(sdk_level, logging.INFO))
