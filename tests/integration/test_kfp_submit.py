"""`t2iops pipeline submit / schedule` through a real kfp.Client against a small KFP API server
on 127.0.0.1 that records each request and answers like the v2beta1 API: what is sent (the
compiled package, the parameters, the experiment), --wait's exit codes, bad parameters."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from t2iops.cli import main
from t2iops.config import load_config
from t2iops.pipelines.compile import compile_pipeline


class KfpApi:
    """Records requests; run states for GET /runs/<id> are served from ``self.states`` in order."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        self.states: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                api.requests.append((self.command, self.path, body))
                payload = api.respond(self.command, self.path.split("?")[0], body)
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def respond(self, method: str, path: str, body: dict) -> dict:
        if path.endswith("/experiments") and method == "GET":
            return {"experiments": []}
        if path.endswith("/experiments"):
            return {"experiment_id": "exp-1", "display_name": body.get("display_name")}
        if path.endswith("/runs") and method == "POST":
            return {"run_id": "run-1", "display_name": body.get("display_name"), "state": "PENDING"}
        if "/runs/run-1" in path:
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return {"run_id": "run-1", **state}
        if path.endswith("/recurringruns"):
            return {"recurring_run_id": "rr-1", "display_name": body.get("display_name")}
        return {}

    def posted(self, suffix: str) -> list[dict]:
        return [b for m, p, b in self.requests if m == "POST" and p.split("?")[0].endswith(suffix)]


def _run_state(state: str, tasks: dict[str, str]) -> dict:
    return {"state": state, "run_details": {"task_details": [
        {"task_id": f"t{i}", "display_name": name, "state": s} for i, (name, s) in enumerate(tasks.items())]}}


# A base model a pod can load (the embedded default models/toy-base is refused before sending).
CLUSTER = ["-S", "model.base_model=s3://models/tiny-sdxl"]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compile_pipeline(tmp_path_factory.mktemp("pkg") / "pipeline.yaml", cfg=load_config("params.yaml", CLUSTER[1::2]))


@pytest.fixture()
def api():
    server = KfpApi()
    yield server
    server.server.shutdown()


def test_submit_sends_the_package_parameters_and_experiment(api, package, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-sent-7c1e")
    rc = main(["pipeline", "submit", "--host", api.host, "--experiment", "adapters", "--package", str(package),
               "-p", "data_source=dvc", "-p", "dvc_repo=https://git.example/data.git", "-p", "dvc_rev=v3",
               "-p", "eval_shards=[0,1,2]", "-S", "train.lr=2e-5", "--run-name", "nightly", *CLUSTER])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["run_id"] == "run-1"
    (experiment,) = api.posted("/experiments")
    assert experiment["display_name"] == "adapters"
    (run,) = api.posted("/runs")
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    compiled = [d for d in yaml.safe_load_all(package.read_text()) if d]
    assert run["pipeline_spec"]["pipeline_spec"] == compiled[0]
    assert run["pipeline_spec"]["platform_spec"] == compiled[1]
    params = run["runtime_config"]["parameters"]
    assert params["data_source"] == "dvc" and params["dvc_rev"] == "v3" and params["eval_shards"] == [0, 1, 2]
    assert json.loads(params["config_train"])["train"]["lr"] == 2e-5
    assert "train" not in json.loads(params["config_encode"])  # encode's cache key ignores train.*
    assert "never-sent-7c1e" not in json.dumps(api.requests)


def test_wait_exit_codes_follow_the_run_and_the_gate(api, package, capsys):
    args = ["pipeline", "submit", "--host", api.host, "--package", str(package), "--wait", "--poll-seconds", "0.01", *CLUSTER]
    api.states = [_run_state("RUNNING", {"train": "RUNNING"}),
                  _run_state("SUCCEEDED", {"train": "SUCCEEDED", "merge + gate": "SUCCEEDED", "publish": "SUCCEEDED"})]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "run run-1: RUNNING" in err and "publish: SUCCEEDED" in err
    api.states = [_run_state("SUCCEEDED", {"train": "SUCCEEDED", "merge + gate": "SUCCEEDED"})]
    assert main(args) == 3
    assert "evaluation gate failed" in capsys.readouterr().err
    api.states = [_run_state("FAILED", {"train": "FAILED"})]
    assert main(args) == 1
    assert "ended FAILED" in capsys.readouterr().err


def test_schedule_creates_a_recurring_run(api, package, capsys):
    rc = main(["pipeline", "schedule", "--host", api.host, "--package", str(package), "--cron", "0 3 * * 1",
               "--name", "weekly", "-p", "model_name=circles", *CLUSTER])
    assert rc == 0
    (job,) = api.posted("/recurringruns")
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert job["display_name"] == "weekly" and job["experiment_id"] == "exp-1" and job["no_catchup"] is True
    assert job["runtime_config"]["parameters"]["model_name"] == "circles"
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["recurring_run_id"] == "rr-1"


def test_bad_parameters_fail_before_anything_is_sent(api, package, capsys):
    for params, fragment in ((["-p", "eval_shards=[1,2]"], "eval_shards"), (["-p", "nodes=2"], "unknown pipeline parameter 'nodes'"),
                             (["-S", "train.lr=-1"], "train.lr")):
        rc = main(["pipeline", "submit", "--host", api.host, "--package", str(package), *params, *CLUSTER])
        assert rc == 2
        assert fragment in capsys.readouterr().err
    rc = main(["pipeline", "schedule", "--host", api.host, "--package", str(package), "--cron", "every monday", *CLUSTER])
    assert rc == 2 and "--cron" in capsys.readouterr().err
    assert api.posted("/runs") == [] and api.posted("/recurringruns") == []
