"""The VLM teacher: the real transformers loading path on tiny random Qwen-VL checkpoints, and the retry / combine
policy on a scripted backend."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from fixtures.fake_vlm import answer_length, build_fake_vlm, write_noise_dataset
from spatialreward.dataset import labels_dir, read_label_shards
from spatialreward.formula import reward_from_subscores
from spatialreward.teacher.config import ChatRequest, Completion, TeacherConfig, TeacherLoadError
from spatialreward.teacher.pipeline import label_dataset
from spatialreward.teacher.prompts import load_prompts
from spatialreward.teacher.registry import make_teacher, parse_teacher_spec, resolve_teacher
from spatialreward.teacher.vlm import VLMTeacher, cap_pixels
from spatialreward.types import EditSample

# Tiny answers: a random model never stops on its own, so every call costs max_new_tokens decoding steps.
FAKE = dict(max_new_tokens=16, batch_size=4, parse_retries=1)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's matrices are too small to split; a second thread only waits on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fake_qwen25(tmp_path_factory):
    return build_fake_vlm(tmp_path_factory.mktemp("fake25") / "fake-qwen2_5_vl", "qwen2_5_vl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    samples = write_noise_dataset(root, groups=2, edits_per_group=3)
    return root, samples


# ---------------------------------------------------------------------------------------------------------------
# Real loading path on tiny checkpoints
# ---------------------------------------------------------------------------------------------------------------


def _accounted(judgements, samples):
    assert [j.sample_id for j in judgements] == [s.sample_id for s in samples]
    for j in judgements:
        assert j.status in ("ok", "parse_error", "failed")
        extra = j.model_extra
        if j.status == "ok":
            assert extra["sc_status"] == extra["pq_status"] == "ok"
            assert j.reward == pytest.approx(reward_from_subscores(j.subscores))
        else:
            assert j.reward is None and j.error
            assert "ok" != extra["sc_status"] or "ok" != extra["pq_status"]
        raw = json.loads(j.raw_text)
        assert set(raw) == {"sc", "pq"}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_fake_checkpoint_loads_and_judges(tmp_path, dataset, family):
    path = build_fake_vlm(tmp_path / f"fake-{family}", family)
    assert (path / "config.json").exists() and (path / "chat_template.jinja").exists()
    teacher = make_teacher(f"vlm:{path}", TeacherConfig(**FAKE))
    assert isinstance(teacher, VLMTeacher)
    assert teacher.name == f"vlm:fake-{family}" and teacher.prompt_version == "sr-v1"
    root, samples = dataset
    judgements = teacher.judge_batch(samples[:3], root)
    _accounted(judgements, samples[:3])
    for j in judgements:
        extra = j.model_extra
        assert extra["prompt_tokens"] > 0
        # Each attempt decodes at most max_new_tokens; gibberish is re-asked once (parse_retries=1).
        attempts = extra["sc_attempts"] + extra["pq_attempts"]
        assert 2 <= attempts <= 4
        assert 0 < extra["completion_tokens"] <= attempts * FAKE["max_new_tokens"]


def test_fake_label_pipeline_accounts_for_every_record(fake_qwen25, tmp_path):
    samples = write_noise_dataset(tmp_path, groups=2, edits_per_group=2)
    teacher = VLMTeacher.from_pretrained(fake_qwen25, TeacherConfig(**FAKE))
    report = label_dataset(tmp_path, teacher, shard_size=3, format="parquet", progress=False)  # extras survive Arrow
    records = read_label_shards(labels_dir(tmp_path, teacher.name))
    assert sorted(j.sample_id for j in records) == sorted(s.sample_id for s in samples)
    assert report.labelled == len(samples) == sum(report.counts.values())
    assert Counter(j.status for j in records) == report.counts
    for call in ("sc", "pq"):
        assert sum(report.call_counts[call].values()) == len(samples)
        assert report.call_counts[call] == Counter(j.model_extra[f"{call}_status"] for j in records)
    assert len(report.shards) == 2  # 4 records at 3 per shard
    assert all(j.prompt_version == "sr-v1" for j in records)


def test_unloadable_image_fails_only_that_sample(fake_qwen25, dataset, tmp_path):
    root, samples = dataset
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = EditSample(sample_id="bad", source=str(broken), edited=samples[0].edited, instruction="x", group_id="z")
    # An absolute path is allowed here on purpose: this test is about an image that does not decode.
    teacher = VLMTeacher.from_pretrained(fake_qwen25, TeacherConfig(**FAKE, allow_outside_root=True))
    judgements = teacher.judge_batch([samples[0], bad, samples[1]], root)
    assert [j.sample_id for j in judgements] == [samples[0].sample_id, "bad", samples[1].sample_id]
    failed = judgements[1]
    assert failed.status == "failed" and failed.reward is None
    assert "bad: source" in failed.error and str(broken) in failed.error
    assert failed.model_extra["sc_attempts"] == failed.model_extra["pq_attempts"] == 0
    assert judgements[0].model_extra["sc_attempts"] >= 1


# A valid SC answer the fake model is forced to write to every request (PQ ignores its regions): the ok branch of
# generate → slicing off the prompt → decoding → parsing, checked against a known verdict.
FORCED = '{"edit_region": [{"id": 0, "bbox_2d": [100, 150, 400, 500]}], "reasoning": "<|bbox_0|>", "score": [20, 15]}'


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_forced_answer_comes_back_ok_through_the_real_generate_path(tmp_path, dataset, family):
    model = build_fake_vlm(tmp_path / f"fake-{family}", family, answer=FORCED)
    n_tokens = answer_length(FORCED)
    config = TeacherConfig(max_new_tokens=n_tokens + 8, batch_size=3, parse_retries=1)
    teacher = VLMTeacher.from_pretrained(model, config)
    root, samples = dataset
    judgements = teacher.judge_batch(samples[:3], root)  # one left-padded batch of 3 per call type
    _accounted(judgements, samples[:3])
    for j in judgements:
        assert j.status == "ok", j.error
        assert j.subscores == [20, 15, 20, 15] and j.boxes == [[100, 150, 400, 500]]
        assert j.reward == pytest.approx(reward_from_subscores([20, 15, 20, 15]))
        assert j.reasoning == "<|bbox_0|>" and j.model_extra["region_ids"] == ["0"]
        assert json.loads(j.raw_text) == {"sc": [FORCED], "pq": [FORCED]}  # decoded exactly, no prompt, no padding
        extra = j.model_extra
        assert extra["sc_attempts"] == extra["pq_attempts"] == 1  # read at once: no re-ask
        assert extra["completion_tokens"] == 2 * n_tokens  # up to and including <|im_end|>, per call
        assert extra["parse_flags"] == [] and extra["sc_boxes_dropped"] == 0


def test_sample_paths_outside_the_dataset_are_not_read(fake_qwen25, dataset, tmp_path):
    root, samples = dataset
    outside = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), "white").save(outside)
    absolute = EditSample(sample_id="abs", source=str(outside), edited=samples[0].edited, instruction="x",
                          group_id="z")
    climbing = EditSample(sample_id="up", source=samples[0].source, edited=f"../{outside.parent.name}/secret.png",
                          instruction="x", group_id="z")
    backend = ScriptedBackend({"sc": GOOD_SC, "pq": GOOD_PQ})
    judgements = VLMTeacher(backend, TeacherConfig()).judge_batch([absolute, climbing, samples[0]], root)
    assert [j.status for j in judgements] == ["failed", "failed", "ok"]
    assert "abs: source: image path" in judgements[0].error and "absolute" in judgements[0].error
    assert "up: edited: image path" in judgements[1].error and "'..'" in judgements[1].error
    assert len(backend.requests) == 2  # only the confined sample's SC + PQ were sent anywhere
    allowed = VLMTeacher(ScriptedBackend({"sc": GOOD_SC, "pq": GOOD_PQ}), TeacherConfig(allow_outside_root=True))
    assert all(j.ok for j in allowed.judge_batch([absolute, climbing], root))


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherLoadError, match="cannot load a VLM"):
        VLMTeacher.from_pretrained(tmp_path / "no-such-model", TeacherConfig(**FAKE))


# ---------------------------------------------------------------------------------------------------------------
# Policy on a scripted backend
# ---------------------------------------------------------------------------------------------------------------

GOOD_SC = ('{"edit_region": [{"id": 0, "label": "patch", "bbox_2d": [100, 100, 400, 500]}], '
           '"reasoning": "<|bbox_0|>", "score": [20, 15]}')
GOOD_PQ = '```json\n{"reasoning": "clean", "score": [22, 18]}\n```'


class ScriptedBackend:
    """Answers from a script: ``script[(call, n)]`` for the n-th request of that call type, else ``script[call]``.
    An answer that is an Exception instance means "no answer" (the error text is passed on)."""

    name = "scripted"
    preferred_batch_size = 4

    def __init__(self, script):
        self.script = script
        self.requests: list[tuple[ChatRequest, float]] = []
        self.seen = Counter()

    def complete(self, requests, *, temperature):
        out = []
        for r in requests:
            self.requests.append((r, temperature))
            call = "sc" if len(r.images) == 2 else "pq"
            answer = self.script.get((call, self.seen[call]), self.script.get(call))
            self.seen[call] += 1
            if isinstance(answer, Exception):
                out.append(Completion(text=None, error=str(answer)))
            else:
                out.append(Completion(text=answer, prompt_tokens=10, completion_tokens=5))
        return out


def _one_sample(tmp_path):
    samples = write_noise_dataset(tmp_path, groups=1, edits_per_group=1)
    return samples[0]


def test_ok_judgement_combines_both_calls(tmp_path):
    sample = _one_sample(tmp_path)
    teacher = VLMTeacher(ScriptedBackend({"sc": GOOD_SC, "pq": GOOD_PQ}), TeacherConfig())
    j = teacher.judge(sample, tmp_path)
    assert j.status == "ok" and j.error is None
    assert j.subscores == [20, 15, 22, 18]
    assert j.reward == pytest.approx(0.7353, abs=1e-4)  # the worked example of ARCHITECTURE.md
    assert j.boxes == [[100, 100, 400, 500]]
    assert j.model_extra["region_labels"] == ["patch"] and j.reasoning == "<|bbox_0|>"
    assert j.model_extra["pq_reasoning"] == "clean"
    assert json.loads(j.raw_text) == {"sc": [GOOD_SC], "pq": [GOOD_PQ]}
    assert j.model_extra["sc_attempts"] == j.model_extra["pq_attempts"] == 1
    assert j.model_extra["prompt_tokens"] == 20 and j.model_extra["completion_tokens"] == 10


def test_unreadable_answer_is_reasked_with_sampling_then_ok(tmp_path):
    sample = _one_sample(tmp_path)
    backend = ScriptedBackend({("sc", 0): "I think it is fine.", ("sc", 1): GOOD_SC, "pq": GOOD_PQ})
    j = VLMTeacher(backend, TeacherConfig(parse_retries=2, retry_temperature=0.5)).judge(sample, tmp_path)
    assert j.status == "ok"
    assert j.model_extra["sc_attempts"] == 2 and j.model_extra["pq_attempts"] == 1
    temperatures = [t for r, t in backend.requests if len(r.images) == 2]
    assert temperatures == [0.0, 0.5]
    seeds = [r.seed for r, _ in backend.requests if len(r.images) == 2]
    assert seeds[1] == seeds[0] + 1  # each re-ask has its own repeatable seed
    assert json.loads(j.raw_text)["sc"] == ["I think it is fine.", GOOD_SC]


def test_unreadable_after_all_retries_is_parse_error_without_reward(tmp_path):
    sample = _one_sample(tmp_path)
    backend = ScriptedBackend({"sc": GOOD_SC, "pq": '{"reasoning": "meh", "score": [12.5]}'})
    j = VLMTeacher(backend, TeacherConfig(parse_retries=2)).judge(sample, tmp_path)
    assert j.status == "parse_error" and j.reward is None and j.subscores is None
    assert j.error.startswith("pq: parse_error after 3 attempts") and "1 values" in j.error
    assert j.model_extra["sc_status"] == "ok" and j.model_extra["sc_score"] == [20, 15]
    assert j.boxes == [[100, 100, 400, 500]]  # the readable SC part is kept, but no reward
    assert j.model_extra["pq_score"] is None


def test_pixel_boxes_are_read_against_the_sent_edited_image(tmp_path):
    samples = write_noise_dataset(tmp_path, groups=1, edits_per_group=1, size=(1000, 1500))  # H × W
    pixels = '{"edit_region": [[300, 100, 1200, 900]], "reasoning": "", "score": [20, 15]}'
    j = VLMTeacher(ScriptedBackend({"sc": pixels, "pq": GOOD_PQ}), TeacherConfig(max_image_pixels=1500 * 1000)).judge(
        samples[0], tmp_path)
    assert j.status == "ok" and j.boxes == [[200, 100, 800, 900]]  # 1500 × 1000 px → 0–1000
    assert j.model_extra["parse_flags"] == ["sc:boxes_from_pixels"]


def test_all_boxes_dropped_while_edited_is_parse_error_and_a_partial_drop_is_counted(tmp_path):
    sample = _one_sample(tmp_path)
    dropped = '{"edit_region": [[100, 100, 100, 900]], "reasoning": "", "score": [20, 15]}'
    j = VLMTeacher(ScriptedBackend({"sc": dropped, "pq": GOOD_PQ}), TeacherConfig(parse_retries=0)).judge(
        sample, tmp_path)
    assert j.status == "parse_error" and j.reward is None and "the only box was dropped" in j.error
    partial = '{"edit_region": [[100, 100, 100, 900], [10, 10, 300, 300]], "reasoning": "", "score": [20, 15]}'
    j = VLMTeacher(ScriptedBackend({"sc": partial, "pq": GOOD_PQ}), TeacherConfig()).judge(sample, tmp_path)
    assert j.status == "ok" and j.boxes == [[10, 10, 300, 300]] and j.model_extra["sc_boxes_dropped"] == 1


def test_prompt_score_range_converts_answers_and_flags_them(tmp_path):
    sample = _one_sample(tmp_path)
    prompt_file = tmp_path / "ten.json"
    prompt_file.write_text(json.dumps({"style": "python", "score_range": 10,
                                       "sc": "Rate {instruction} from 0 to {score_range}.", "pq": "0 to {score_range}"}))
    sc = '{"edit_region": [[0, 0, 500, 500]], "reasoning": "", "score": [8, 6]}'
    pq = '{"reasoning": "", "score": [10, 4]}'
    j = VLMTeacher(ScriptedBackend({"sc": sc, "pq": pq}), TeacherConfig(prompt_file=str(prompt_file))).judge(
        sample, tmp_path)
    assert j.status == "ok" and j.subscores == [20, 15, 25, 10]
    assert j.model_extra["parse_flags"] == ["sc:scores_rescaled", "pq:scores_rescaled"]


def test_no_answer_is_failed_and_not_reasked(tmp_path):
    sample = _one_sample(tmp_path)
    backend = ScriptedBackend({"sc": RuntimeError("HTTP 503 (after 5 attempts)"), "pq": "garbage"})
    j = VLMTeacher(backend, TeacherConfig(parse_retries=1)).judge(sample, tmp_path)
    assert j.status == "failed" and j.reward is None
    assert "sc: failed after 1 attempt: HTTP 503" in j.error and "pq: parse_error after 2 attempts" in j.error
    assert j.model_extra["sc_attempts"] == 1


def test_prompt_file_substitutes_wording_and_version(tmp_path):
    sample = _one_sample(tmp_path)
    prompt_file = tmp_path / "authors.json"
    prompt_file.write_text(json.dumps({
        "version": "authors", "system": "You judge edits.",
        "sc": 'Edit: {instruction}. Answer {"score": [a, b]}', "pq": "Quality?",
    }))
    backend = ScriptedBackend({"sc": GOOD_SC, "pq": GOOD_PQ})
    teacher = VLMTeacher(backend, TeacherConfig(prompt_file=str(prompt_file)))
    j = teacher.judge(sample, tmp_path)
    assert j.prompt_version.startswith("authors@") and len(j.prompt_version) == len("authors@") + 12
    sc_request = backend.requests[0][0]
    assert sc_request.text == f'Edit: {sample.instruction}. Answer {{"score": [a, b]}}'
    assert sc_request.system == "You judge edits."
    assert backend.requests[1][0].text == "Quality?"


def test_python_style_prompt_file_renders_like_str_format(tmp_path):
    """The authors' scorer renders its templates with str.format; "style": "python" reproduces that exactly."""
    sc = 'Score 0 to {score_range}. Answer {{"score": [...]}}.\nInstruction:\n{instruction}'
    pq = "Answer:\n{{{{\n\"score\" : [...]\n}}}} on 0 to {score_range}"
    prompt_file = tmp_path / "python.json"
    prompt_file.write_text(json.dumps({"style": "python", "score_range": 10, "sc": sc, "pq": pq}))
    prompts = load_prompts(prompt_file)
    assert prompts.sc_text("add {a} hat") == sc.format(instruction="add {a} hat", score_range=10)
    assert prompts.sc_text("x").startswith('Score 0 to 10. Answer {"score": [...]}.')
    assert prompts.pq_text() == pq.format(score_range=10) and "{{" in prompts.pq_text()
    assert prompts.version.startswith("file:python.json@")
    prompt_file.write_text(json.dumps({"style": "python", "sc": 'Answer {"score": 1} for {instruction}', "pq": "q"}))
    with pytest.raises(ValueError, match="does not render"):
        load_prompts(prompt_file)


def test_prompt_file_without_instruction_slot_is_refused(tmp_path):
    prompt_file = tmp_path / "bad.json"
    prompt_file.write_text(json.dumps({"sc": "Judge it.", "pq": "Quality?"}))
    with pytest.raises(ValueError, match=r"\{instruction\}"):
        VLMTeacher(ScriptedBackend({}), TeacherConfig(prompt_file=str(prompt_file)))


def test_images_are_capped_keeping_aspect():
    big = Image.new("RGB", (2000, 1000))
    capped = cap_pixels(big, 512 * 512)
    assert capped.width * capped.height <= 512 * 512
    assert abs(capped.width / capped.height - 2.0) < 0.01
    small = Image.new("RGB", (100, 50))
    assert cap_pixels(small, 512 * 512) is small


def test_requests_carry_capped_images(tmp_path):
    samples = write_noise_dataset(tmp_path, groups=1, edits_per_group=1, size=(300, 400))
    backend = ScriptedBackend({"sc": GOOD_SC, "pq": GOOD_PQ})
    VLMTeacher(backend, TeacherConfig(max_image_pixels=100 * 100)).judge(samples[0], tmp_path)
    for request, _ in backend.requests:
        assert all(im.width * im.height <= 100 * 100 for im in request.images)


@pytest.mark.parametrize("bad", [
    dict(max_new_tokens=0), dict(parse_retries=-1), dict(parse_retries=1, retry_temperature=0.0),
    dict(max_image_pixels=100), dict(dtype="int8"), dict(timeout_s=0),
])
def test_config_rejects_broken_values(bad):
    with pytest.raises(ValueError):
        TeacherConfig(**bad)


def test_teacher_specs():
    assert str(parse_teacher_spec("openai:http://h:8000/v1#org/m")) == "openai:http://h:8000/v1#org/m"
    assert parse_teacher_spec("openai:http://h:8000").model is None
    assert parse_teacher_spec("vlm:SpatialReward/SpatialReward-8B").target == "SpatialReward/SpatialReward-8B"
    for bad in ("", "vlm:", "gpt", "openai:#m"):
        with pytest.raises(TeacherLoadError):
            parse_teacher_spec(bad)
    resolved = resolve_teacher("vlm:SpatialReward/SpatialReward-8B")
    assert resolved.name == resolved.identity == "vlm:SpatialReward/SpatialReward-8B"
    assert resolved.prompt_version == "sr-v1"
    resolved = resolve_teacher("openai:http://h:8000#org/m")  # a named model: the server is not asked
    assert resolved.name == resolved.identity == "openai:http://h:8000/v1#org/m"  # the URL is part of the name
    assert str(resolved.spec) == "openai:http://h:8000/v1#org/m"
    with pytest.raises(TeacherLoadError, match="unknown teacher options"):
        make_teacher("vlm:x", not_an_option=1)
