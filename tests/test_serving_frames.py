"""The binary body of ``POST /v1/score`` (raw RGB frames): the same answers as the JSON body, per-item errors, and a
400 naming the problem for every way a body can lie about its frames."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
import torch

from spatialreward.serving import RewardClient, ServeConfig
from spatialreward.serving.client import serialise
from spatialreward.serving.frames import CONTENT_TYPE, FramesError, decode_frames, encode_frames
from spatialreward.serving.server import BackgroundServer
from tests.fixtures.students import random_images as images
from tests.fixtures.students import toy_reward_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    return toy_reward_model(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def server(rm):
    cfg = ServeConfig(model="toy", port=0, max_batch=16, max_wait_ms=5, max_queue=64, max_items=8,
                      max_body_bytes=2_000_000, max_pixels=200_000)
    with BackgroundServer(cfg, rm) as srv:
        yield srv


def arrays(n, size=40, seed=0):
    return [np.asarray(im) for im in images(n, size=size, seed=seed)]


def post(server, body: bytes) -> httpx.Response:
    return httpx.post(server.url + "/v1/score", content=body, headers={"content-type": CONTENT_TYPE})


def test_frames_round_trip_as_views_without_copies():
    frames = arrays(2, size=20) + [np.zeros((7, 30, 3), np.uint8)]
    body = encode_frames({"items": []}, frames)
    header, got = decode_frames(body, max_frames=8, max_pixels=10_000)
    assert header == {"items": []}
    assert all(np.array_equal(a, b) for a, b in zip(frames, got))
    assert not got[0].flags.writeable and got[2].shape == (7, 30, 3)
    with pytest.raises(ValueError, match="frame 0"):
        encode_frames({}, [np.zeros((4, 4, 3), np.float32)])


def test_raw_client_answers_match_json_and_direct_scoring(server, rm):
    src, edt = images(1, seed=1)[0], images(5, seed=2)
    instr = ["make it red"] * 5
    raw = RewardClient(server.url, image_format="raw").score([src] * 5, edt, instr, group_ids=list("abcde"))
    png = RewardClient(server.url).score([src] * 5, edt, instr)
    ref = rm.score([src] * 5, edt, instr)
    assert [r["group_id"] for r in raw] == list("abcde")
    assert np.allclose([r["reward"] for r in raw], ref.reward.numpy(), atol=1e-5)
    assert np.allclose([r["reward"] for r in raw], [r["reward"] for r in png], atol=1e-6)
    body, content_type = serialise(RewardClient._encode([src] * 5, edt, instr, None, False, image_format="raw")[0])
    header, frames = decode_frames(body, max_frames=99, max_pixels=10**6)
    assert content_type == CONTENT_TYPE and len(frames) == 6  # the group's source went once
    assert header["sources"] == [{"frame": 0}]
    assert header["items"][3] == {"source_index": 0, "edited": {"frame": 4}, "instruction": "make it red"}


def test_raw_frames_go_at_the_model_side_with_the_servers_resize_and_score_the_same(server, rm):
    src, edt = images(1, size=60, seed=11)[0], images(3, size=60, seed=12)
    instr = ["add a hat"] * 3
    client = RewardClient(server.url, image_format="raw")
    assert client.model_side() == rm.image_size == httpx.get(server.url + "/health").json()["input_size"]
    body, _ = serialise(RewardClient._encode([src] * 3, edt, instr, None, False, image_format="raw",
                                             side=client.model_side())[0])
    _, frames = decode_frames(body, max_frames=9, max_pixels=10**6)
    assert {f.shape for f in frames} == {(rm.image_size, rm.image_size, 3)} and rm.image_size < 60
    resized = [r["reward"] for r in client.score([src] * 3, edt, instr)]
    full = [r["reward"] for r in RewardClient(server.url, image_format="raw", resize=False).score([src] * 3, edt, instr)]
    assert resized == full  # bit-identical: the one resize, done here instead of on the server
    assert np.allclose(resized, rm.score([src] * 3, edt, instr).reward.numpy(), atol=1e-6)


def test_async_raw_scoring_asks_the_side_once_and_matches_sync(server, rm):
    import asyncio

    src, edt = images(1, size=60, seed=15)[0], images(3, size=60, seed=16)
    client = RewardClient(server.url, image_format="raw")

    async def both():
        async with httpx.AsyncClient() as http:
            return await client.ascore([src] * 3, edt, ["x"] * 3, client=http), await client.ascore([src] * 3, edt, ["x"] * 3)

    with_client, own_client = asyncio.run(both())
    assert client._side == rm.image_size
    sync = RewardClient(server.url, image_format="raw").score([src] * 3, edt, ["x"] * 3)
    assert [r["reward"] for r in with_client] == [r["reward"] for r in own_client] == [r["reward"] for r in sync]
    assert RewardClient(server.url).model_side() is None  # png: nothing to resize to


def test_a_raw_client_whose_server_does_not_say_its_side_sends_full_frames():
    client = RewardClient("http://127.0.0.1:9", image_format="raw", timeout_s=1)  # nothing listens there
    assert client.model_side() is None


def test_a_raw_request_over_the_item_limit_is_split_and_each_part_carries_its_sources(server, rm):
    srcs, edt = images(2, seed=3), images(12, seed=4)
    sources = [srcs[i // 6] for i in range(12)]
    res = RewardClient(server.url, image_format="raw", max_items_per_request=5).score(sources, edt, ["x"] * 12)
    assert np.allclose([r["reward"] for r in res], rm.score(sources, edt, ["x"] * 12).reward.numpy(), atol=1e-5)


def test_bad_frame_references_fail_their_item_alone(server):
    good, small = arrays(2, seed=5), np.zeros((8, 8, 3), np.uint8)
    header = {"sources": [{"frame": 0}], "items": [
        {"source_index": 0, "edited": {"frame": 1}, "instruction": "add a hat"},
        {"source_index": 0, "edited": {"frame": 9}, "instruction": "x"},
        {"source_index": 0, "edited": "base64?", "instruction": "x"},
        {"source_index": 0, "instruction": "no edited image"},
        {"source_index": 0, "edited": {"frame": 2}, "instruction": "x"},
        {"source_index": 0, "edited": {"frame": True}, "instruction": "x"},
    ]}
    r = post(server, encode_frames(header, [*good, small]))
    assert r.status_code == 200
    res = r.json()["results"]
    assert res[0]["ok"] and 0 <= res[0]["reward"] <= 1
    assert [x["error_kind"] for x in res[1:]] == ["bad_image", "bad_image", "missing_field", "image_too_small",
                                                    "bad_image"]
    assert "items[1].edited" in res[1]["error"] and "3 frames" in res[1]["error"]


def lying_body(header: dict, shapes, payload: bytes) -> bytes:
    head = json.dumps({**header, "frames": shapes}).encode()
    return struct.pack("<4sI", b"SRF1", len(head)) + head + payload


@pytest.mark.parametrize("body, says", [
    (b"SRF", "shorter than"),
    (struct.pack("<4sI", b"PNG1", 2) + b"{}", "not b'SRF1'"),
    (struct.pack("<4sI", b"SRF1", 10**6) + b"{}", "runs past the body"),
    (struct.pack("<4sI", b"SRF1", 3) + b"{x}", "not JSON"),
    (struct.pack("<4sI", b"SRF1", 2) + b"[]", "JSON object"),
    (lying_body({"items": []}, None, b""), '"frames" list'),
    (lying_body({"items": []}, [[4, -4]], b""), "positive integers"),
    (lying_body({"items": []}, [[4, 4.5]], b""), "positive integers"),
    (lying_body({"items": []}, [[1000, 1000]], b""), "over the limit"),
    (lying_body({"items": []}, [[20, 20]], bytes(20 * 20 * 3 - 1)), "runs past the end"),
    (lying_body({"items": []}, [[20, 20]], bytes(20 * 20 * 3 + 5)), "5 bytes after the last frame"),
    (lying_body({"x": 1}, [], b""), '"items" list'),
    (lying_body({"items": [{}] * 9}, [], b""), "over the limit of 8"),
])
def test_a_body_that_lies_about_its_frames_is_a_400_naming_the_problem(server, body, says):
    r = post(server, body)
    assert r.status_code in (400, 413), r.text
    assert says in r.json()["error"]


def test_decode_refuses_more_frames_than_the_request_may_hold():
    body = lying_body({"items": []}, [[1, 1]] * 5, bytes(15))
    with pytest.raises(FramesError, match="at most 4"):
        decode_frames(body, max_frames=4, max_pixels=100)


def test_the_rl_adapters_pass_the_raw_format_through(server, rm):
    from spatialreward.rl.flow_grpo import spatialreward_score

    src, edt = images(1, seed=13)[0], images(2, seed=14)
    fn = spatialreward_score("cpu", url=server.url, image_format="raw")
    scores, info = fn(edt, ["make it red"] * 2, [{}] * 2, [src] * 2)
    assert all(info["ok"]) and np.allclose(scores, rm.score([src] * 2, edt, ["make it red"] * 2).reward.numpy(),
                                            atol=1e-5)


def test_parallel_encoding_keeps_order_and_flags_only_the_bad_edits(rm):
    """Enough edits to go through the image thread pool: a bad edited image and a bad source fail their own edits;
    a source whose edits all failed is not sent; the rest keep their order and their rewards."""
    good_src, bad_src = images(1, seed=3)[0], b"not an image"
    edt = images(12, seed=4)
    edt[2] = b"\x89PNG truncated"
    sources = [good_src] * 8 + [bad_src] * 4
    body, failed = RewardClient._encode(sources, edt, ["make it red"] * 12, None, False, image_format="raw")
    assert sorted(failed) == [2, 8, 9, 10, 11]
    assert all(failed[i]["error_kind"] == "bad_image" and f"item {i}:" in failed[i]["error"] for i in failed)
    assert len(body["sources"]) == 1 and [it["source_index"] for it in body["items"]] == [0] * 7
    sent = [np.asarray(edt[i]) for i in (0, 1, 3, 4, 5, 6, 7)]
    assert all(np.array_equal(it["edited"], ref) for it, ref in zip(body["items"], sent))


def test_a_split_call_names_a_bad_edit_by_its_place_in_the_whole_call_sync_and_async(server, rm):
    """Parts are encoded ahead while the previous part is scored: order, indices and error names stay global."""
    import asyncio

    srcs, edt = images(2, seed=5), images(13, seed=6)
    sources = [srcs[i // 7] for i in range(13)]
    edt[11] = b"not an image"
    client = RewardClient(server.url, image_format="raw", max_items_per_request=4)
    ref = rm.score(sources, edt, ["x"] * 13, on_error="flag")
    for res in (client.score(sources, edt, ["x"] * 13, group_ids=list(range(13))),
                asyncio.run(client.ascore(sources, edt, ["x"] * 13, group_ids=list(range(13))))):
        assert [r["index"] for r in res] == list(range(13)) and [r["group_id"] for r in res] == list(range(13))
        assert [r["ok"] for r in res] == [i != 11 for i in range(13)]
        assert res[11]["error"].startswith("item 11:")
        good = [i for i in range(13) if i != 11]
        assert np.allclose([res[i]["reward"] for i in good], ref.reward.numpy()[good], atol=1e-5)
