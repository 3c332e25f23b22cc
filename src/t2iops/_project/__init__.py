"""The KFP pipeline definition: the repository's top-level ``pipelines/`` and ``components/``
folders, importable as ``t2iops._project.pipelines`` and ``t2iops._project.components`` wherever
t2iops is installed.

An installed wheel carries both folders here (setup.py maps them in). In a checkout (an editable
install, where this file is read from ``src/``) the folders stay at the top of the repository,
where a reader looks for them, and this package's search path points there instead. Either way
the compiler imports the same names and nothing is put on ``sys.path``.
"""
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[3]
if (_CHECKOUT / "pipelines" / "training.py").is_file() and (_CHECKOUT / "components").is_dir():
    __path__ = [str(_CHECKOUT)]
