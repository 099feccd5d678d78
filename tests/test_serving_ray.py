"""The Ray Serve deployment: its construction and replica logic (fast, no Ray cluster), and a real local Serve
application on loopback scored through `RewardClient` (slow: starting Ray and a replica takes tens of seconds)."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from spatialreward.serving import RewardClient, ServeConfig  # noqa: E402
from spatialreward.serving import ray_serve  # noqa: E402
from tests.fixtures.students import random_images as images, toy_reward_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    return toy_reward_model(tmp_path_factory.mktemp("student"))


def test_build_app_sets_replicas_fractional_gpus_and_batching_room():
    cfg = ServeConfig(model="runs/nano", device="cuda", max_batch=64)
    app = ray_serve.build_app(cfg, replicas=3, num_gpus=0.25, num_cpus=2)
    deployment = app._bound_deployment
    assert deployment.name == "SpatialReward"
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_gpus"] == 0.25 and deployment.ray_actor_options["num_cpus"] == 2
    assert deployment.max_ongoing_requests == 256  # not Ray's default 5: concurrent requests must meet in a batch
    config_arg, model_arg = deployment.init_args  # what each replica is constructed with
    assert ServeConfig(**config_arg).max_batch == 64 and model_arg is None  # replicas load config.model themselves


def test_build_app_refuses_a_gpu_device_mismatch_and_bad_counts():
    with pytest.raises(ValueError, match="--device cuda"):
        ray_serve.build_app(ServeConfig(model="m"), num_gpus=0.5)
    with pytest.raises(ValueError, match="--num-gpus"):
        ray_serve.build_app(ServeConfig(model="m", device="cuda"))
    with pytest.raises(ValueError, match="replicas"):
        ray_serve.build_app(ServeConfig(model="m"), replicas=0)


def test_replica_serves_the_same_app_without_ray(rm):
    """The replica's own logic (what Ray runs in each actor): same routes, answers equal to direct scoring."""
    from fastapi.testclient import TestClient

    replica = ray_serve.RewardReplica({"model": "toy", "max_batch": 8, "max_wait_ms": 1}, model=rm)
    app = replica.__serve_build_asgi_app__()
    src, edt = images(1, seed=1)[0], images(3, seed=2)
    with TestClient(app) as client:  # runs the lifespan: the model worker starts and stops with the app
        replica.check_health()
        r = client.post("/v1/score", json=RewardClient.payload([src] * 3, edt, ["make it red"] * 3))
        assert r.status_code == 200
        got = [x["reward"] for x in r.json()["results"]]
        assert client.get("/ping").json() == {"status": "ok"}
        body = pickle.dumps({"input_images": [[src]], "output_image": [edt[0]],
                             "meta_datas": [{"instruction": "make it red"}]})
        assert client.post("/", content=body).status_code == 200
    assert np.allclose(got, rm.score([src] * 3, edt, ["make it red"] * 3).reward.numpy(), atol=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_local_ray_serve_application_scores_through_the_client(rm):
    """A real Serve application (one CPU replica, the model shipped through Ray's object store) on loopback."""
    port = free_port()
    cfg = ServeConfig(model="toy", port=port, max_batch=16, max_wait_ms=10)
    pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # replicas import tests.fixtures
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}})
    try:
        ray_serve.start(cfg, model=rm, replicas=1, num_cpus=1)
        url = f"http://127.0.0.1:{port}"
        src, edt = images(1, seed=3)[0], images(6, seed=4)
        instr = ["turn it green"] * 6
        res = RewardClient(url, retries=5).score([src] * 6, edt, instr)
        assert [r["index"] for r in res] == list(range(6)) and all(r["ok"] for r in res)
        assert np.allclose([r["reward"] for r in res], rm.score([src] * 6, edt, instr).reward.numpy(), atol=1e-5)
        bad = RewardClient(url).score([src], [Image.new("RGB", (8, 8))], ["x"])[0]
        assert not bad["ok"] and bad["error_kind"] == "image_too_small"
        assert httpx.get(url + "/health").json()["status"] == "ok"
        assert "spatialreward_edits_total" in httpx.get(url + "/metrics").text
    finally:
        serve.shutdown()
        ray.shutdown()
