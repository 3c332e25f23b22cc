"""Errors that the CLI turns into a one-line reason on stderr and a documented exit code.

Exit codes: 0 ok; 1 the stage failed (bad data over threshold, parity failure, training
aborted...); 2 usage or configuration error (nothing was done); 3 the evaluation gate failed.
"""
from __future__ import annotations


class T2IError(Exception):
    exit_code = 1


class UsageError(T2IError):
    exit_code = 2


class DataError(T2IError):
    """The dataset is unusable (too many bad rows, unreadable metadata...)."""


class ModelError(T2IError):
    """A base model or adapter cannot be resolved, loaded or does not fit."""


class GateFailed(T2IError):
    exit_code = 3
