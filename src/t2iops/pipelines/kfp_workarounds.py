"""Every place where the installed kfp forces a workaround, and nowhere else.

Each one checks the behaviour it works around, changes nothing when kfp no longer has it, and
says where upstream stands. Nothing here runs at import: callers enter what they need.

* :func:`quick_caller_names`: kfp's ``pipeline_task`` calls ``inspect.stack()`` in every
  ``set_cpu_request`` / ``set_memory_limit`` / ... for an error message (no upstream issue filed
  as of kfp 2.16; kfp/dsl/pipeline_task.py).
* :func:`local_conditions_evaluated`: kfp 2.16's local runner skips every ``dsl.If`` branch
  (kubeflow/pipelines#13313, open: "fix dsl.Condition, propagate skips, harden DockerRunner").
* :func:`process_state_kept`: kfp.local swaps ``builtins.print`` and the root logger per task,
  from threads (no upstream issue filed as of kfp 2.16; kfp/local/logging_utils.py).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import re
import sys
from typing import Iterator


class _CallerNamesOnly:
    """``inspect`` for kfp's ``pipeline_task`` module, whose one use of it is
    ``inspect.stack()[1][3]`` (the calling method's name, for an error message). The real
    ``inspect.stack()`` reads the source of every frame and maps each to its module by scanning
    ``sys.modules``: in a process that has torch, diffusers and DeepSpeed loaded (4,500 modules;
    ``t2iops retrain``, notebooks, tests) building the training pipeline took 9 s instead of 1 s
    for its ~70 such calls. This returns the same ``(frame, filename, lineno, function, ...)``
    entries without reading sources."""

    def __getattr__(self, name):
        return getattr(inspect, name)

    @staticmethod
    def stack(context: int = 1) -> list[tuple]:
        frames, frame = [], sys._getframe(1)
        while frame is not None:
            frames.append((frame, frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, None, None))
            frame = frame.f_back
        return frames


@contextlib.contextmanager
def quick_caller_names() -> Iterator[None]:
    """While a pipeline is built: kfp's ``pipeline_task`` gets caller names without reading every
    frame's source; the module is given back its ``inspect`` afterwards."""
    from kfp.dsl import pipeline_task

    if getattr(pipeline_task, "inspect", None) is not inspect:  # kfp stopped using it, or nested
        yield
        return
    pipeline_task.inspect = _CallerNamesOnly()
    try:
        yield
    finally:
        pipeline_task.inspect = inspect


def local_conditions_evaluated() -> bool:
    """kfp 2.16's local runner cannot evaluate the CEL condition KFP compiles for ``dsl.If``
    (``inputs.parameter_values['...'] == true``: every branch is skipped). When the installed
    kfp has that gap, translate those conditions to the Python its evaluator understands; a kfp
    that evaluates them itself is left alone. Returns whether the translation is installed. It
    stays installed for the process: it only changes what kfp.local would get wrong."""
    from kfp.local import io
    from kfp.local.orchestrator import enhanced_dag_orchestrator as edo

    evaluator = edo.ConditionEvaluator
    if getattr(evaluator, "_t2iops_translated", False):
        return True
    probe = io.IOStore()
    probe.put_task_output("probe-task", "Output", True)
    logging.disable(logging.WARNING)  # the probe's failure is expected on kfp 2.16: not news
    try:
        works = bool(evaluator.evaluate_condition("inputs.parameter_values['pipelinechannel--probe-task-Output'] == true", probe))
    except Exception:
        works = False
    finally:
        logging.disable(logging.NOTSET)
    if works:
        return False
    original = evaluator.evaluate_condition

    def evaluate_condition(condition: str, io_store) -> bool:
        python = re.sub(r"inputs\.parameter_values\['(pipelinechannel--[^']+)'\]", r"\1", condition)
        python = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", python))
        return original(python, io_store)

    evaluator.evaluate_condition = staticmethod(evaluate_condition)
    evaluator._t2iops_translated = True
    return True


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """kfp.local swaps process-wide state per task and puts back what it found: ``builtins.print``
    (``logging_utils.indented_print``: four spaces before each line) and the root logger's handlers
    and level (``local_logger_context``: one handler on the ``sys.stdout`` of that moment). Its DAG
    orchestrator runs parallel tasks (the ParallelFor shards) in threads, so overlapping tasks put
    back each other's state: after a run, every ``print`` of the process could start with four
    spaces and every log record go to a stream that is closed by then (seen in the test suite: a
    later CLI's JSON indented, "ValueError: I/O operation on closed file" from logging). Whatever
    happened inside, the process's print and root logger come back as they were."""
    import builtins

    print_before = builtins.print
    root = logging.getLogger()
    handlers_before, level_before = root.handlers[:], root.level
    try:
        yield
    finally:
        builtins.print = print_before
        root.handlers[:] = handlers_before
        root.setLevel(level_before)
