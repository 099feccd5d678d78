"""Every RL adapter called the way its framework calls it, in-process (a `RewardModel`) and through the HTTP server
(`BackgroundServer` on loopback): answers match a direct `RewardModel.score`, a failed edit is flagged (NaN / None
+ its reason, never 0 or 0.5), and a group's source is encoded once however the trainer hands it over.

Call shapes (read from the frameworks' sources): Flow-GRPO ``reward_fn(images, prompts, metadata, ref_images)``
(``scripts/train_flux_kontext.py``; factories built by ``multi_score`` as ``fn(device)``); Flow-Factory
``model(prompt=, image=, condition_images=, metadata=)`` from its ``RewardProcessor``, reading ``.rewards``;
VeRL-Omni ``await compute_score(data_source=, solution_image=, ground_truth=, extra_info=, **router_kwargs)`` from
its ``VisualRewardManager`` (uint8 pixel responses); TRL ``f(prompts=, completions=, completion_ids=, **columns,
trainer_state=, log_extra=, log_metric=)`` from ``GRPOTrainer._calculate_rewards``. None of these frameworks is
a dependency; where one is installed (TRL here) its real code calls the adapter, otherwise that test skips.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from spatialreward import RewardModel
from spatialreward.rl import flow_factory, flow_grpo, trl as trl_adapter, verl_omni
from spatialreward.rl.scorer import EditScorer, as_image_list, share_equal_sources
from spatialreward.serving import ServeConfig
from spatialreward.serving.server import BackgroundServer
from tests.fixtures.students import toy_reward_model

torch.set_num_threads(2)
INSTRUCTION = "paint the upper-left square red"


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    return toy_reward_model(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def server(rm):
    cfg = ServeConfig(model="toy", port=0, max_batch=64, max_wait_ms=30, max_queue=256, max_items=64)
    with BackgroundServer(cfg, rm) as srv:
        yield srv


@pytest.fixture(params=["local", "http"])
def where(request, rm, server):
    """Each adapter runs once in-process and once through the server."""
    return request.param


def scorer_kwargs(where, rm, server) -> dict:
    return {"reward_model": rm} if where == "local" else {"url": server.url}


def pil_batch(n, seed, size=40):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def copies(image, n):
    """A trainer's view of a group's source: n separate but equal objects (one per candidate)."""
    return [image.copy() for _ in range(n)]


def reference(rm, sources, editeds, instructions):
    return rm.score(list(sources), list(editeds), list(instructions)).reward.double().numpy()


def count_backbone_rows(rm, monkeypatch):
    rows = []
    original = rm.student.encode_images
    monkeypatch.setattr(rm.student, "encode_images", lambda x: (rows.append(x.shape[0]), original(x))[1])
    return rows


# -- the shared scorer ---------------------------------------------------------------------------------------------

def test_as_image_list_keeps_uint8_and_widens_half():
    u8 = torch.randint(0, 255, (2, 3, 20, 20), dtype=torch.uint8)
    assert all(t.dtype == torch.uint8 for t in as_image_list(u8))  # not 0–255 floats, which load_image refuses
    assert all(t.dtype == torch.float32 for t in as_image_list(torch.rand(2, 3, 20, 20).bfloat16()))
    assert [a.shape for a in as_image_list(np.zeros((3, 20, 20, 3), np.uint8))] == [(20, 20, 3)] * 3
    with pytest.raises(ValueError, match="NCHW"):
        as_image_list(torch.zeros(1, 1, 3, 8, 8))


def test_share_equal_sources_merges_equal_only():
    a = pil_batch(1, seed=1)[0]
    b = pil_batch(1, seed=2)[0]
    nearly = a.copy()
    nearly.putpixel((39, 39), (0, 0, 0) if a.getpixel((39, 39)) != (0, 0, 0) else (1, 1, 1))
    chw = torch.from_numpy(np.array(a)).permute(2, 0, 1)
    out = share_equal_sources([a, a.copy(), b, np.asarray(a), nearly, a.copy(), chw, chw.clone()])
    assert out[0] is out[1] is out[3] is out[5]  # the same pixels as PIL or as an HWC array are one source
    assert out[2] is b and out[4] is nearly  # a one-pixel difference is a different source
    assert out[6] is out[7] is chw  # CHW tensors are compared among themselves (another layout)


def test_scorer_flags_bad_instructions_the_same_in_process_and_remote(where, rm, server):
    src, edt = pil_batch(1, seed=3)[0], pil_batch(4, seed=4)
    rewards, infos = EditScorer(**scorer_kwargs(where, rm, server)).score(
        [src] * 4, edt, [INSTRUCTION, "", None, "x" * 2001])
    assert np.isfinite(rewards[0]) and np.isnan(rewards[1:]).all()
    assert "empty instruction" in infos[1]["error"]
    assert "missing" in infos[2]["error"]
    assert "over the limit" in infos[3]["error"]
    assert np.allclose(rewards[0], reference(rm, [src], edt[:1], [INSTRUCTION]), atol=1e-5)


def test_remote_scorer_flags_an_image_it_cannot_encode(rm, server):
    src, edt = pil_batch(1, seed=5)[0], pil_batch(2, seed=6)
    rewards, infos = EditScorer(url=server.url).score([src] * 3, [edt[0], Image.new("RGB", (0, 0)), edt[1]],
                                                      [INSTRUCTION] * 3)
    assert np.isnan(rewards[1]) and not infos[1]["ok"] and "empty image" in infos[1]["error"]
    assert np.allclose(rewards[[0, 2]], reference(rm, [src] * 2, edt, [INSTRUCTION] * 2), atol=1e-5)


# -- Flow-GRPO ------------------------------------------------------------------------------------------------------

def test_flow_grpo_reward_fn_in_the_edit_trainer_call_shape(where, rm, server, monkeypatch):
    # multi_score builds each score function as fn(device) when "device" is among its argument names
    assert "device" in flow_grpo.spatialreward_score.__code__.co_varnames
    fn = flow_grpo.spatialreward_score("cpu", **scorer_kwargs(where, rm, server))
    n = 8
    source = pil_batch(1, seed=7)[0]
    ref_images = copies(source, n)  # the trainer resizes each prompt's image: equal objects, not one
    images = torch.rand(n, 3, 40, 40)  # pipeline output_type="pt": NCHW float in [0, 1]
    images[5] = float("nan")  # a diverged sample
    prompts = [INSTRUCTION] * n
    metadata = tuple({"prompt": p, "image": "x.png"} for p in prompts)
    rows = count_backbone_rows(rm, monkeypatch)
    scores, info = fn(images, prompts, metadata, ref_images)
    assert isinstance(scores, list) and len(scores) == n
    assert math.isnan(scores[5]) and not info["ok"][5] and "NaN" in info["errors"][5]
    assert info["novelty"] == [None] * n and info["scored_by"] == ["student"] * n  # no novelty fit, no fallback
    good = [i for i in range(n) if i != 5]
    expected = reference(rm, [source] * 7, [images[i] for i in good], [INSTRUCTION] * 7)
    assert np.allclose([scores[i] for i in good], expected, atol=1e-5)
    # one source for the whole group, then the candidates: in-process the NaN one rides along as a blank; the
    # client flags it before sending
    assert rows[0] == 1 + (n if where == "local" else n - 1)


def test_flow_grpo_accepts_nhwc_uint8_and_reads_metadata_instruction(where, rm, server):
    fn = flow_grpo.spatialreward_score("cpu", **scorer_kwargs(where, rm, server))
    images = np.stack([np.asarray(im) for im in pil_batch(3, seed=8)])  # NHWC uint8
    refs = pil_batch(3, seed=9)
    metadata = [{"instruction": "make it blue"}, {}, {"instruction": "add a hat"}]
    scores, _ = fn(images, ["p0", "p1", "p2"], metadata, ref_images=refs)
    expected = reference(rm, refs, list(images), ["make it blue", "p1", "add a hat"])
    assert np.allclose(scores, expected, atol=1e-5)


def test_flow_grpo_without_sources_or_settings_says_what_to_do(rm, monkeypatch):
    fn = flow_grpo.spatialreward_score("cpu", reward_model=rm)
    with pytest.raises(ValueError, match="ref_images"):
        fn(torch.rand(2, 3, 32, 32), ["a", "b"], [{}, {}])  # multi_score's default branch passes no sources
    monkeypatch.delenv("SPATIALREWARD_URL", raising=False)
    monkeypatch.delenv("SPATIALREWARD_MODEL", raising=False)
    with pytest.raises(ValueError, match="SPATIALREWARD_URL"):
        flow_grpo.spatialreward_score("cpu")


def test_flow_grpo_factory_reads_the_server_url_from_the_environment(rm, server, monkeypatch):
    monkeypatch.setenv("SPATIALREWARD_URL", server.url)
    fn = flow_grpo.spatialreward_score("cuda:0")  # the device is the trainer's; the remote scorer ignores it
    src, edt = pil_batch(1, seed=10)[0], pil_batch(2, seed=11)
    scores, _ = fn(edt, [INSTRUCTION] * 2, {}, ref_images=[src, src])
    assert np.allclose(scores, reference(rm, [src] * 2, edt, [INSTRUCTION] * 2), atol=1e-5)


# -- Flow-Factory ---------------------------------------------------------------------------------------------------

def test_flow_factory_pointwise_with_pil_inputs(where, rm, server):
    model = flow_factory.SpatialRewardPointwise(**scorer_kwargs(where, rm, server))
    assert "condition_images" in model.required_fields
    src = pil_batch(1, seed=12)[0]
    edt = pil_batch(4, seed=13)
    edt[2] = Image.new("RGB", (0, 0))  # an empty decode
    out = model(prompt=[INSTRUCTION] * 4, image=edt, condition_images=[[s] for s in copies(src, 4)],
                metadata=[json.dumps({"prompt": INSTRUCTION})] * 4)
    rewards = torch.as_tensor(out.rewards, dtype=torch.float32)  # what RewardProcessor does with it
    assert rewards.shape == (4,) and torch.isnan(rewards[2]) and out.extra_info["errors"][2]
    expected = reference(rm, [src] * 3, [edt[i] for i in (0, 1, 3)], [INSTRUCTION] * 3)
    assert np.allclose(rewards[[0, 1, 3]].numpy(), expected, atol=1e-5)


def test_flow_factory_pointwise_with_tensor_inputs_and_metadata_instruction(where, rm, server):
    model = flow_factory.SpatialRewardPointwise(**scorer_kwargs(where, rm, server))
    src = torch.rand(3, 40, 40)
    image = [torch.rand(3, 40, 40) for _ in range(3)]  # use_tensor_inputs: CHW in [0, 1]
    conditions = [src.unsqueeze(0).clone() for _ in range(3)]  # [N, C, H, W] per sample
    meta = [json.dumps({"instruction": "remove the cat"}), json.dumps({}), "not json"]
    out = model(prompt=["p0", "p1", "p2"], image=image, condition_images=conditions, metadata=meta)
    expected = reference(rm, [src] * 3, image, ["remove the cat", "p1", "p2"])
    assert np.allclose(out.rewards.numpy(), expected, atol=1e-5)


def test_flow_factory_groupwise_ranks_and_keeps_failures_out(where, rm, server):
    model = flow_factory.SpatialRewardGroupwise(**scorer_kwargs(where, rm, server))
    src = pil_batch(1, seed=14)[0]
    edt = pil_batch(6, seed=15)
    edt[4] = Image.new("RGB", (0, 0))
    out = model(prompt=[INSTRUCTION] * 6, image=edt, condition_images=[[s] for s in copies(src, 6)])
    ranks = out.rewards.numpy()
    raw = np.asarray(out.extra_info["raw_rewards"])
    assert np.isnan(ranks[4]) and np.isnan(raw[4])
    ok = [0, 1, 2, 3, 5]
    assert sorted(ranks[ok].tolist()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(np.argsort(ranks[ok])) == list(np.argsort(raw[ok]))
    assert np.allclose(raw[ok], reference(rm, [src] * 5, [edt[i] for i in ok], [INSTRUCTION] * 5), atol=1e-5)


def test_flow_factory_reads_its_settings_from_the_rewards_entry(rm, server):
    # Flow-Factory's RewardArguments puts unknown YAML keys (server_url, token) into extra_kwargs
    config = SimpleNamespace(reward_model="spatialreward.rl.flow_factory.SpatialRewardPointwise", device="cuda",
                             batch_size=16, extra_kwargs={"server_url": server.url}, reward_model_kwargs=None)
    if flow_factory.HAVE_FLOW_FACTORY:
        pytest.skip("flow_factory is installed: its base class would need a real RewardArguments and Accelerator")
    model = flow_factory.SpatialRewardPointwise(config, None)
    assert model.scorer.remote
    with pytest.raises(ValueError, match="server_url"):
        flow_factory.SpatialRewardPointwise(SimpleNamespace(extra_kwargs={}), None)


def test_flow_factory_subclasses_the_real_base_classes_when_installed():
    ff = pytest.importorskip("flow_factory.rewards", reason="flow_factory is not installed (not on PyPI under that "
                                                            "name; the plain-class path is tested above)")
    assert issubclass(flow_factory.SpatialRewardPointwise, ff.PointwiseRewardModel)
    assert issubclass(flow_factory.SpatialRewardGroupwise, ff.GroupwiseRewardModel)


# -- VeRL-Omni ------------------------------------------------------------------------------------------------------

def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_verl_omni_compute_score_per_sample_concurrently(where, rm, server):
    scorer = EditScorer(**scorer_kwargs(where, rm, server))
    source = pil_batch(1, seed=16)[0]
    n = 8
    # VisualRewardManager hands over uint8 pixel responses; a parquet image column arrives as {"bytes": ...}
    responses = [torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous() for im in pil_batch(n, seed=17)]
    responses[3] = torch.zeros(3, 8, 8, dtype=torch.uint8)  # under 16 px on the server; fine in-process
    extra = {"source_img": {"bytes": png(source), "path": None}, "instruction": INSTRUCTION, "num_turns": None,
             "rollout_reward_scores": {}}

    async def step():
        return await asyncio.gather(*[
            verl_omni.compute_score(data_source="edit", solution_image=r, ground_truth="unused", extra_info=extra,
                                    reward_router_address=None, scorer=scorer)
            for r in responses])

    batches_before = server.service.worker.batches
    results = asyncio.run(step())
    assert all(set(r) == {"score", "error", "instruction_following", "consistency", "naturalness", "artifacts"}
               for r in results)
    ok = [i for i in range(n) if i != 3] if where == "http" else list(range(n))
    expected = reference(rm, [source] * len(ok), [responses[i] for i in ok], [INSTRUCTION] * len(ok))
    assert np.allclose([results[i]["score"] for i in ok], expected, atol=1e-5)
    assert all(results[i]["error"] == "" for i in ok)
    if where == "http":
        assert math.isnan(results[3]["score"]) and "under 16 px" in results[3]["error"]
        assert math.isnan(results[3]["consistency"])
        # concurrent samples meet in the server's batches (30 ms window), one source for all of them
        assert server.service.worker.batches - batches_before <= 3
        assert server.service.worker.last_batch_sources == 1


def test_verl_omni_float_1chw_and_failure_modes(rm):
    scorer = EditScorer(reward_model=rm)
    src, edt = pil_batch(1, seed=18)[0], torch.rand(1, 3, 40, 40)
    out = asyncio.run(verl_omni.compute_score("edit", edt, INSTRUCTION, {"source_img": src}, scorer=scorer))
    assert np.isclose(out["score"], reference(rm, [src], [edt[0]], [INSTRUCTION])[0], atol=1e-5)
    bad = torch.full((3, 40, 40), float("nan"))
    out = asyncio.run(verl_omni.compute_score("edit", bad, INSTRUCTION, {"source_img": src}, scorer=scorer))
    assert math.isnan(out["score"]) and "NaN" in out["error"]
    with pytest.raises(RuntimeError, match="could not score"):
        asyncio.run(verl_omni.compute_score("edit", bad, INSTRUCTION, {"source_img": src}, scorer=scorer,
                                            on_error="raise"))
    with pytest.raises(ValueError, match="source_img"):
        asyncio.run(verl_omni.compute_score("edit", edt, INSTRUCTION, {}, scorer=scorer))


def test_verl_omni_default_scorer_comes_from_the_environment(rm, server, monkeypatch):
    monkeypatch.setattr(verl_omni, "_SCORER", None)
    monkeypatch.setenv("SPATIALREWARD_URL", server.url)
    src, edt = pil_batch(1, seed=19)[0], pil_batch(1, seed=20)[0]
    out = asyncio.run(verl_omni.compute_score(data_source="edit", solution_image=torch.from_numpy(
        np.array(edt)).permute(2, 0, 1), ground_truth=INSTRUCTION, extra_info={"source_img": np.asarray(src)}))
    assert np.isclose(out["score"], reference(rm, [src], [edt], [INSTRUCTION])[0], atol=1e-5)
    assert verl_omni._SCORER.remote


# -- TRL ------------------------------------------------------------------------------------------------------------

def trl_columns(n, seed):
    source = pil_batch(1, seed=seed)[0]
    edited = pil_batch(n, seed=seed + 1)
    return {"source_image": copies(source, n), "edited_image": edited, "instruction": [INSTRUCTION] * n}, source


def test_trl_reward_func_in_grpo_trainer_call_shape(where, rm, server, monkeypatch):
    func = trl_adapter.SpatialRewardFunc(**scorer_kwargs(where, rm, server))
    n = 4
    columns, source = trl_columns(n, seed=21)
    columns["edited_image"][1] = Image.new("RGB", (0, 0))
    logged = {}
    rows = count_backbone_rows(rm, monkeypatch)
    out = func(prompts=["edit it"] * n, completions=["<edit/>"] * n, completion_ids=[[1, 2]] * n, **columns,
               trainer_state=SimpleNamespace(global_step=3), log_extra=lambda *a: None,
               log_metric=lambda k, v: logged.__setitem__(k, v))
    assert len(out) == n and out[1] is None  # TRL turns None into NaN and leaves it out
    ok = [0, 2, 3]
    expected = reference(rm, [source] * 3, [columns["edited_image"][i] for i in ok], [INSTRUCTION] * 3)
    assert np.allclose([out[i] for i in ok], expected, atol=1e-5)
    assert logged == {"spatialreward/failed": 1.0}
    if where == "local":
        assert rows[0] == 1 + n  # four equal column entries, one source through the backbone (+ the 4 edits)


def test_trl_conversational_prompts_and_render(rm):
    src, edt = pil_batch(1, seed=23)[0], pil_batch(2, seed=24)
    rendered = {"a": edt[0], "b": edt[1]}
    func = trl_adapter.SpatialRewardFunc(reward_model=rm, edited_column=None, instruction_column=None,
                                         render=lambda completion, **row: rendered[completion[0]["content"]])
    prompts = [[{"role": "system", "content": "You edit images."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "make it blue"}]}]] * 2
    completions = [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]]
    out = func(prompts=prompts, completions=completions, source_image=[src, src])
    assert np.allclose(out, reference(rm, [src] * 2, edt, ["make it blue"] * 2), atol=1e-5)
    with pytest.raises(ValueError, match="source_image"):
        func(prompts=["x"], completions=["y"], other=[1])


def test_trl_real_calculate_rewards_calls_it(rm):
    """TRL's own `GRPOTrainer._calculate_rewards` (unbound, on a stand-in trainer holding what it reads) calls the
    reward function with the dataset columns and turns the failed edit's None into NaN."""
    grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="trl is not installed (not a dependency)")
    from accelerate import PartialState
    from trl.trainer.utils import get_callable_name, is_async_callable

    PartialState()  # the single-process state TRL's gather and logger read (a trainer creates it in __init__)

    func = trl_adapter.SpatialRewardFunc(reward_model=rm)
    assert get_callable_name(func) == "spatialreward" and not is_async_callable(func)
    n = 4
    columns, source = trl_columns(n, seed=25)
    columns["edited_image"][2] = Image.new("RGB", (0, 0))
    inputs = [{"prompt": "edit it", **{k: v[i] for k, v in columns.items()}} for i in range(n)]
    metrics = {}
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        reward_funcs=[func], reward_processing_classes=[None], reward_func_names=["spatialreward"],
        state=SimpleNamespace(global_step=0), args=SimpleNamespace(report_to=[]), environments=None,
        _log_completion_extra=lambda *a, **k: None, _log_metric=lambda k, v: metrics.__setitem__(k, v))
    rewards = grpo.GRPOTrainer._calculate_rewards(trainer, inputs, ["edit it"] * n, ["done"] * n, [[1]] * n)
    assert rewards.shape == (n, 1) and torch.isnan(rewards[2, 0])
    ok = [0, 1, 3]
    expected = reference(rm, [source] * 3, [columns["edited_image"][i] for i in ok], [INSTRUCTION] * 3)
    assert np.allclose(rewards[ok, 0].numpy(), expected, atol=1e-5)
    assert metrics == {"spatialreward/failed": 1.0}


def test_remote_scorer_sends_bmp_with_the_same_answers(rm, server):
    src, edt = pil_batch(1, seed=26)[0], pil_batch(3, seed=27)
    rewards, _ = EditScorer(url=server.url, image_format="bmp").score([src] * 3, edt, [INSTRUCTION] * 3)
    assert np.allclose(rewards, reference(rm, [src] * 3, edt, [INSTRUCTION] * 3), atol=1e-5)
    with pytest.raises(ValueError, match="image_format"):
        EditScorer(url=server.url, image_format="gif")
