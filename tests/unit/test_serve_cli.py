"""``t2iops serve`` refuses what it cannot serve on before loading anything: one line, exit 2."""
from __future__ import annotations

import socket
from pathlib import Path

from t2iops.cli import main

TOY = str(Path(__file__).resolve().parents[2] / "src" / "t2iops" / "presets" / "toy.yaml")


def test_a_port_in_use_is_one_line_naming_it(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = main(["serve", "--registry", str(tmp_path), "--port", str(port), "--params", TOY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"t2iops serve: error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use): "
                   "choose another --port, or stop what listens there"]


def test_a_negative_poll_interval_is_refused(tmp_path, capsys):
    rc = main(["serve", "--registry", str(tmp_path), "--poll-seconds", "-1", "--params", TOY])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "t2iops serve: error: --poll-seconds -1.0: give 0 (never) or more"
