"""Multi-node training job objects (structure of TrainJob / PyTorchJob as the CRDs define them)
and the launcher, driven through the real kubernetes client against a small API server on
127.0.0.1 that records requests and plays the job's status."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from t2iops.errors import UsageError
from t2iops.pipelines.settings import PipelineSettings
from t2iops.pipelines.trainjob import (
    DistributedTrainingFailed, job_object, job_name, launch_and_wait, spec_from_settings,
)


def _spec(nodes=2, gpus=4, **kw):
    args = dict(run_id="5f0c6a1e-77aa-4c1b-9d38-1234567890ab", namespace="team-a", nodes=nodes, gpus_per_node=gpus,
                cache_uri="s3://bucket/root/enc", out_uri="s3://bucket/runs/r1/train", config_yaml="train:\n  lr: 0.0001\n")
    args.update(kw)
    return spec_from_settings(PipelineSettings(), **args)


def _container_env(env):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def test_trainjob_object_shape():
    m = job_object("trainjob", _spec())
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["metadata"] == {"name": "t2iops-train-5f0c6a1e77aa4c1b9d38", "namespace": "team-a",
                             "labels": {"app.kubernetes.io/part-of": "t2iops", "t2iops.io/run-id": "5f0c6a1e-77aa-4c1b-9d38-1234567890ab"}}
    spec = m["spec"]
    assert spec["runtimeRef"] == {"name": "t2iops-deepspeed", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4 and trainer["image"] == PipelineSettings().image
    assert trainer["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == "4" and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    script = trainer["command"][2]
    assert trainer["command"][:2] == ["bash", "-c"]
    assert "mpirun --hostfile /etc/mpi/hostfile -np 8" in script
    assert "--cache s3://bucket/root/enc --out s3://bucket/runs/r1/train --resume latest" in script
    # Ranks sharing a node's /tmp each write their own params file.
    assert script.count('"${TMPDIR:-/tmp}/t2iops-params-$RANK.yaml"') == 2
    env = _container_env(trainer["env"])
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "t2iops-s3", "key": "aws_secret_access_key"}}
    assert env["T2IOPS_CONFIG_YAML"] == "train:\n  lr: 0.0001\n"
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "t2iops.io/pipeline"
    jobs = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert [j["name"] for j in jobs] == ["launcher", "node"]
    pod = jobs[1]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"t2iops.io/pool": "gpu"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}]
    assert pod["serviceAccountName"] == "t2iops-pipeline"
    json.dumps(m)  # plain data, ready for the API


def test_pytorchjob_object_shape():
    m = job_object("pytorchjob", _spec(nodes=3, gpus=8))
    assert m["apiVersion"] == "kubeflow.org/v1" and m["kind"] == "PyTorchJob"
    spec = m["spec"]
    assert spec["nprocPerNode"] == "8"
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert "torchrun --nnodes 3 --nproc_per_node 8" in container["command"][2]
        assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
        assert pod["nodeSelector"] == {"t2iops.io/pool": "gpu"} and pod["tolerations"][0]["effect"] == "NoSchedule"
    single = job_object("pytorchjob", _spec(nodes=1, gpus=2))["spec"]["pytorchReplicaSpecs"]
    assert set(single) == {"Master"}


def test_bad_specs_are_refused_with_the_reason():
    with pytest.raises(UsageError, match="on S3"):
        _spec(cache_uri="/tmp/local-cache")
    with pytest.raises(UsageError, match="train_nodes"):
        _spec(nodes=0)
    with pytest.raises(UsageError, match="trainjob' or 'pytorchjob"):
        job_object("mpijob", _spec())
    assert len(job_name("x" * 200)) <= 63


class K8sApi:
    """The custom-objects endpoints of one job; ``script`` lists (method, status, body) answers."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append((self.command, self.path.split("?")[0], body))
                method, status, payload = api.script.pop(0)
                assert method == self.command, (method, self.command, self.path)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self):
        from kubernetes import client

        conf = client.Configuration()
        conf.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        from t2iops.pipelines.trainjob import custom_objects_api

        return custom_objects_api(client.ApiClient(conf))


def _status(*conditions):
    return {"status": {"conditions": [{"type": c, "status": "True", "message": f"{c} here"} for c in conditions]}}


def test_launcher_creates_the_job_and_waits_for_completion():
    job = job_object("trainjob", _spec())
    api = K8sApi([("POST", 201, job), ("GET", 200, {}), ("GET", 200, _status("Created")), ("GET", 200, _status("Complete"))])
    final = launch_and_wait(job, api=api.client(), poll_seconds=0, sleep=lambda s: None)
    assert final["status"]["conditions"][0]["type"] == "Complete"
    method, path, body = api.requests[0]
    assert (method, path) == ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs")
    assert body == job
    assert all(p == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs/t2iops-train-5f0c6a1e77aa4c1b9d38"
               for _, p, _ in api.requests[1:])
    api.server.shutdown()


def test_launcher_replaces_a_failed_job_on_retry_and_reports_failure():
    job = job_object("pytorchjob", _spec())
    conflict = {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
    api = K8sApi([
        ("POST", 409, conflict), ("GET", 200, _status("Failed")),         # the previous attempt failed
        ("DELETE", 200, {}), ("GET", 404, {"kind": "Status", "code": 404}),  # gone
        ("POST", 201, job), ("GET", 200, _status("Running")), ("GET", 200, _status("Succeeded")),
    ])
    launch_and_wait(job, api=api.client(), poll_seconds=0, sleep=lambda s: None)
    assert [m for m, _, _ in api.requests] == ["POST", "GET", "DELETE", "GET", "POST", "GET", "GET"]
    api.server.shutdown()

    api = K8sApi([("POST", 201, job), ("GET", 200, _status("Running", "Failed"))])
    with pytest.raises(DistributedTrainingFailed, match="Failed here"):
        launch_and_wait(job, api=api.client(), poll_seconds=0, sleep=lambda s: None)
    api.server.shutdown()
