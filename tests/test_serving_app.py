"""The reward server on loopback: answers match a direct `RewardModel.score`, per-item errors, shared work across
requests, the restricted unpickler against real malicious payloads, limits, auth, a full queue, disconnects."""

from __future__ import annotations

import base64
import io
import os
import pickle
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from spatialreward import RewardModel
from spatialreward.serving import RewardClient, ServeConfig
from spatialreward.serving.protocol import ProtocolError, restricted_loads, scan_pickle
from spatialreward.serving.server import BackgroundServer
from tests.fixtures.students import random_images as images, toy_reward_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    return toy_reward_model(tmp_path_factory.mktemp("student"))


def png_b64(im):
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(rm):
    cfg = ServeConfig(model="toy", port=0, max_batch=16, max_wait_ms=20, max_queue=64, max_items=32,
                      max_body_bytes=2_000_000, max_pixels=200_000, max_instruction_chars=50)
    with BackgroundServer(cfg, rm) as srv:
        yield srv


def test_answers_match_direct_scoring_and_keep_order(server, rm):
    src, edt = images(1, seed=1)[0], images(6, seed=2)
    instr = ["make it red", "make it blue"] * 3
    res = RewardClient(server.url).score([src] * 6, edt, instr)
    ref = rm.score([src] * 6, edt, instr)
    assert [r["index"] for r in res] == list(range(6))
    assert np.allclose([r["reward"] for r in res], ref.reward.numpy(), atol=1e-5)
    assert all(set(r["subscores"]) == {"instruction_following", "consistency", "naturalness", "artifacts"} for r in res)


def test_bad_items_fail_alone_with_their_reason(server):
    src, edt = images(1, seed=3)[0], images(2, seed=4)
    tiny = Image.new("RGB", (8, 8))
    big = Image.new("RGB", (600, 600))
    items = [
        {"source": png_b64(src), "edited": png_b64(edt[0]), "instruction": "add a hat"},
        {"source": png_b64(src), "edited": base64.b64encode(b"not an image").decode(), "instruction": "x"},
        {"source": png_b64(src), "edited": png_b64(tiny), "instruction": "x"},
        {"source": png_b64(src), "edited": png_b64(big), "instruction": "x"},
        {"source": png_b64(src), "edited": png_b64(edt[1]), "instruction": ""},
        {"source": png_b64(src), "edited": png_b64(edt[1]), "instruction": "y" * 51},
        {"source": png_b64(src), "instruction": "no edited image"},
        {"source": "%%%", "edited": png_b64(edt[1]), "instruction": "x"},
    ]
    r = httpx.post(server.url + "/v1/score", json={"items": items})
    assert r.status_code == 200
    res = r.json()["results"]
    assert res[0]["ok"] and 0 <= res[0]["reward"] <= 1
    kinds = [x["error_kind"] for x in res[1:]]
    assert kinds == ["bad_image", "image_too_small", "image_too_large", "bad_instruction", "bad_instruction",
                     "missing_field", "bad_image"]
    assert all(x["reward"] is None and x["error"] for x in res[1:])
    assert "items[2].edited" in res[2]["error"] and "under 16 px" in res[2]["error"]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'spatialreward_errors_total{kind="image_too_small"}' in metrics


def test_group_split_over_requests_shares_the_source_in_one_batch(server, rm, monkeypatch):
    src, edt = images(1, seed=5)[0], images(8, seed=6)
    seen = []
    original = rm.student.encode_images
    monkeypatch.setattr(rm.student, "encode_images", lambda x: (seen.append(x.shape[0]), original(x))[1])
    client = RewardClient(server.url)
    out = [None] * 4
    barrier = threading.Barrier(4)

    def one(k):
        barrier.wait()
        out[k] = client.payload([src] * 2, edt[2 * k:2 * k + 2], ["turn it green"] * 2, group_ids=["g"] * 2)
        out[k] = RewardClient(server.url).post(out[k])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    ref = rm.score([src] * 8, edt, ["turn it green"] * 8)
    got = [r["reward"] for k in range(4) for r in out[k]]
    assert np.allclose(got, ref.reward.numpy()[: len(got)], atol=1e-5)
    # each model call encodes (distinct sources + edits); one source for the whole group however it was split
    worker = server.service.worker
    assert worker.last_batch_sources == 1
    server_calls = seen[:-1]  # the last call is the direct reference above
    assert sum(server_calls) == 8 + len(server_calls)  # one source per model call, whatever the split
    assert len(server_calls) <= 2  # the four concurrent requests were batched (20 ms window)


def protocol_body(srcs, edts, metas, **extra):
    return pickle.dumps({"input_images": [[s] for s in srcs], "output_image": edts, "meta_datas": metas,
                         "server_type": "vlm", **extra})


def test_protocol_endpoint_matches_and_flags_failures(server, rm):
    src, edt = images(1, seed=7)[0], images(3, seed=8)
    metas = [{"instruction": "remove the cat", "tag": "a"}, '{"instruction": "remove the cat"}', {"tag": "none"}]
    r = httpx.post(server.url + "/", content=protocol_body([src] * 3, edt, metas))
    assert r.status_code == 200
    out = restricted_loads(r.content, max_pixels=10**6)  # the answer is safe data too
    ref = rm.score([src] * 2, edt[:2], ["remove the cat"] * 2)
    assert np.allclose(out["rewards"][:2], ref.reward.numpy(), atol=1e-5)
    assert out["scores"][:2] == [1.0 if v >= 0.5 else 0.0 for v in ref.reward.tolist()]
    assert np.isnan(out["rewards"][2]) and np.isnan(out["scores"][2])
    assert out["meta_data"][2]["error_kind"] == "missing_field" and out["meta_data"][0]["tag"] == "a"
    assert [m["original_index"] for m in out["meta_data"]] == [0, 1, 2]
    assert "consistency" in out["reasoning"][0] and out["strict_rewards"][:2] == out["rewards"][:2]


def _payloads(marker):
    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    class Popen:
        def __reduce__(self):
            return (subprocess.Popen, (["touch", str(marker)],))

    class Eval:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').write('x')",))

    class Exec:
        def __reduce__(self):
            import builtins

            return (builtins.exec, (f"open({str(marker)!r}, 'w')",))

    inner = {"input_images": [[System()]], "output_image": [Popen()], "meta_datas": [Eval()]}
    out = [pickle.dumps(System()), pickle.dumps(Popen()), pickle.dumps(Eval()), pickle.dumps(Exec()),
           pickle.dumps(inner), pickle.dumps({"meta_datas": [Exec()]}, protocol=0), pickle.dumps(System(), protocol=2)]
    # a hand-written GLOBAL + REDUCE (protocol 0 text opcodes)
    out.append(f"cos\nsystem\n(Vtouch {marker}\ntR.".encode())
    return out


def test_malicious_pickles_execute_nothing(server, tmp_path):
    marker = tmp_path / "pwned"
    for payload in _payloads(marker):
        with pytest.raises(ProtocolError):
            scan_pickle(payload)
        r = httpx.post(server.url + "/", content=payload)
        assert r.status_code == 400, r.text
        assert "not accepted" in r.json()["error"] or "refers to" in r.json()["error"]
    time.sleep(0.2)
    assert not marker.exists()


def test_pickled_image_bomb_is_an_item_error_not_an_allocation(server):
    im = images(1)[0]
    obj = restricted_loads(protocol_body([im], [im], [{"instruction": "x"}]), max_pixels=10**6)
    assert isinstance(obj["output_image"][0], Image.Image)
    fake = pickle.dumps({"input_images": [[im]], "output_image": [im], "meta_datas": [{"instruction": "x"}]})
    # rewrite the images' size (BININT1 40, BININT1 40, TUPLE2) to 100000x100000: no 30 GB allocation, an item error
    fake = fake.replace(b"K(K(\x86", b"J\xa0\x86\x01\x00J\xa0\x86\x01\x00\x86")
    r = httpx.post(server.url + "/", content=fake)
    assert r.status_code == 200
    out = pickle.loads(r.content)  # our own server's answer
    assert out["meta_data"][0]["error_kind"] == "image_too_large" and np.isnan(out["rewards"][0])


def test_bad_bodies_get_4xx_naming_the_problem(server):
    assert httpx.post(server.url + "/v1/score", content=b"{not json").status_code == 400
    assert "items" in httpx.post(server.url + "/v1/score", json={"x": 1}).json()["error"]
    r = httpx.post(server.url + "/v1/score", content=b"x" * 2_100_000)
    assert r.status_code == 413
    r = httpx.post(server.url + "/v1/score", json={"items": [{}] * 33})
    assert r.status_code == 413 and "33 items" in r.json()["error"]
    r = httpx.post(server.url + "/", content=pickle.dumps([1, 2]))
    assert r.status_code == 400 and "dict" in r.json()["error"]
    r = httpx.post(server.url + "/", content=b"\x80\x04garbage")
    assert r.status_code == 400
    assert httpx.get(server.url + "/ping").json() == {"status": "ok"}
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_full_queue_answers_503_with_retry_after(rm):
    cfg = ServeConfig(model="toy", port=0, max_batch=2, max_wait_ms=0, max_queue=4, max_items=4)
    with BackgroundServer(cfg, rm) as srv:
        gate = threading.Event()
        original = rm.score

        def slow_score(*a, **k):
            gate.wait(10)
            return original(*a, **k)

        rm.score = slow_score
        try:
            src, edt = images(1)[0], images(4, seed=9)
            payload = RewardClient.payload([src] * 4, edt, ["x"] * 4)
            results = []
            threads = [threading.Thread(target=lambda: results.append(httpx.post(srv.url + "/v1/score", json=payload,
                                                                                 timeout=30)))
                       for _ in range(3)]
            for t in threads:
                t.start()
                time.sleep(0.3)
            gate.set()
            [t.join() for t in threads]
        finally:
            rm.score = original
        codes = sorted(r.status_code for r in results)
        assert 503 in codes and 200 in codes
        full = next(r for r in results if r.status_code == 503)
        assert int(full.headers["retry-after"]) >= 1 and "queue full" in full.json()["error"]


def test_deadline_and_disconnect_drop_the_work(rm):
    cfg = ServeConfig(model="toy", port=0, max_batch=4, max_wait_ms=0, request_timeout_s=0.5)
    with BackgroundServer(cfg, rm) as srv:
        gate = threading.Event()
        original = rm.score
        rm.score = lambda *a, **k: (gate.wait(3), original(*a, **k))[1]
        try:
            src, edt = images(1)[0], images(2, seed=10)
            r = httpx.post(srv.url + "/v1/score", json=RewardClient.payload([src] * 2, edt, ["x"] * 2), timeout=10)
            assert r.status_code == 504 and "deadline" in r.json()["error"]
            with pytest.raises(httpx.ReadTimeout):  # a client that gives up mid-request
                httpx.post(srv.url + "/v1/score", json=RewardClient.payload([src] * 2, edt, ["x"] * 2), timeout=0.1)
        finally:
            gate.set()
            rm.score = original
        time.sleep(0.6)
        assert srv.service.worker.alive  # nothing killed the worker
        ok = RewardClient(srv.url).score([src], [edt[0]], ["x"])
        assert ok[0]["ok"]


def test_token_is_required_and_non_loopback_needs_one(rm):
    with pytest.raises(ValueError, match="token"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", insecure=True).insecure
    token = "s3cret-token-0123456789"
    cfg = ServeConfig(model="toy", port=0, token=token)
    with BackgroundServer(cfg, rm) as srv:
        src, edt = images(1)[0], images(1, seed=11)
        payload = RewardClient.payload([src], edt, ["x"])
        assert httpx.post(srv.url + "/v1/score", json=payload).status_code == 401
        bad = {"Authorization": "Bearer wrong-token-000000000"}
        assert httpx.post(srv.url + "/v1/score", json=payload, headers=bad).status_code == 401
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.get(srv.url + "/ping").status_code == 200
        assert RewardClient(srv.url, token=token).score([src], edt, ["x"])[0]["ok"]


def test_a_groups_source_is_sent_once_and_chunks_carry_what_they_use(server, rm):
    srcs, edt = images(2, seed=21), images(5, seed=22)
    sources = [srcs[0]] * 3 + [srcs[1]] * 2  # two groups, each source object repeated per candidate
    body = RewardClient.payload(sources, edt, ["add a hat"] * 5)
    assert len(body["sources"]) == 2 and [it["source_index"] for it in body["items"]] == [0, 0, 0, 1, 1]
    chunks = RewardClient(server.url, max_items_per_request=2)._chunks(body)
    assert [len(c["sources"]) for c in chunks] == [1, 2, 1]  # items 2-3 straddle the groups
    assert [it["source_index"] for it in chunks[1]["items"]] == [0, 1]
    got = RewardClient(server.url, max_items_per_request=2).score(sources, edt, ["add a hat"] * 5)
    want = rm.score(sources, edt, ["add a hat"] * 5).reward
    assert np.allclose([r["reward"] for r in got], want.numpy(), atol=1e-5)


def test_a_source_index_that_names_no_source_fails_that_item_alone(server):
    src, edt = images(1, seed=23)[0], images(1, seed=24)[0]
    body = {"sources": [png_b64(src)], "items": [
        {"source_index": 0, "edited": png_b64(edt), "instruction": "x"},
        {"source_index": 5, "edited": png_b64(edt), "instruction": "x"},
        {"source_index": "0", "edited": png_b64(edt), "instruction": "x"}]}
    results = httpx.post(server.url + "/v1/score", json=body, timeout=60).json()["results"]
    assert [r["ok"] for r in results] == [True, False, False]
    assert "items[1].source_index: 5 does not name a source (1 sources)" in results[1]["error"]
