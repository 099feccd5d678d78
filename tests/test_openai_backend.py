"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 that this test starts.

The server answers ``/v1/chat/completions`` by a plan written into the request text (``key=K;plan=500,ok``): one
step per attempt of that key, the last step repeating. Steps: ``ok``, ``500``, ``400``, ``malformed`` (a 200
whose body is not JSON), ``nochoices`` (JSON without choices), ``badusage`` (a good answer whose ``usage`` is not
an object), ``huge`` (a 64 KB body), ``slow:SECONDS`` (then ok). Requests without a plan get a valid
SpatialReward answer (SC for two images, PQ for one).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from fixtures.fake_vlm import write_noise_dataset
from spatialreward.dataset import labels_dir, read_label_shards
from spatialreward.teacher.config import ChatRequest, TeacherConfig, TeacherLoadError
from spatialreward.teacher.openai_backend import (
    BodyTooLarge,
    OpenAIBackend,
    _read_capped,
    _read_capped_sync,
    normalize_base_url,
)
from spatialreward.teacher.pipeline import label_dataset
from spatialreward.teacher.registry import make_teacher

SC_ANSWER = ('{"edit_region": [{"id": 0, "label": "patch", "bbox_2d": [0, 0, 333, 333]}], "reasoning": '
             '"<|bbox_0|> repainted", "score": [21, 17]}')
PQ_ANSWER = '<think>check seams</think>{"reasoning": "no seams", "score": [19, 20]}'
PLAN = re.compile(r"key=(\w+);plan=([\w.:,]+)")


class JudgeServer:
    """A chat-completions server with scripted misbehaviour; records what it saw."""

    def __init__(self):
        self.attempts: Counter = Counter()
        self.bodies: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny-judge"}]}))
                else:
                    self._send(404, "{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.auth_headers.append(self.headers.get("Authorization"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.answer(self, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status, text, content_type="application/json"):
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.handler = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, handler, body):
        content = body["messages"][-1]["content"]
        text = content[-1]["text"]
        images = [c for c in content if c["type"] == "image_url"]
        match = PLAN.search(text)
        if not match:
            handler._send(200, self._completion(SC_ANSWER if len(images) == 2 else PQ_ANSWER))
            return
        key, steps = match.group(1), match.group(2).split(",")
        with self.lock:
            attempt = self.attempts[key]
            self.attempts[key] += 1
        step = steps[min(attempt, len(steps) - 1)]
        if step.startswith("slow:"):
            time.sleep(float(step.split(":")[1]))
            step = "ok"
        if step == "ok":
            handler._send(200, self._completion(f"answer for {key}"))
        elif step in ("500", "400"):
            handler._send(int(step), json.dumps({"error": {"message": f"scripted {step}"}}))
        elif step == "malformed":
            handler._send(200, "<html>upstream proxy error</html>", "text/html")
        elif step == "nochoices":
            handler._send(200, json.dumps({"id": "x", "object": "chat.completion"}))
        elif step == "badusage":
            body = json.loads(self._completion(f"answer for {key}"))
            body["usage"] = "lots"
            handler._send(200, json.dumps(body))
        elif step == "huge":
            handler._send(200, self._completion("x" * 65536))

    @staticmethod
    def _completion(text):
        return json.dumps({
            "id": "cmpl-1", "object": "chat.completion", "model": "tiny-judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107},
        })

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with JudgeServer() as s:
        yield s


def _backend(server, **overrides):
    options = dict(concurrency=4, timeout_s=5.0, retries=3, backoff_s=0.01, max_new_tokens=64)
    options.update(overrides)
    return OpenAIBackend(server.url, "tiny-judge", **options)


def _request(key, plan):
    return ChatRequest(images=[Image.new("RGB", (8, 8), "red")], text=f"key={key};plan={plan}")


def test_results_keep_request_order_under_uneven_latency(server):
    # The first requests are the slowest, so answers arrive in reverse; results must not.
    requests = [_request(f"k{i}", f"slow:{0.05 * (6 - i):.2f}") for i in range(6)]
    completions = _backend(server, concurrency=3).complete(requests, temperature=0.0)
    assert [c.text for c in completions] == [f"answer for k{i}" for i in range(6)]
    assert all(c.error is None and c.prompt_tokens == 100 and c.completion_tokens == 7 for c in completions)
    assert 1 < server.max_in_flight <= 3  # concurrent, and never above the limit


def test_retries_recover_from_500_and_malformed_bodies(server):
    requests = [_request("a", "500,500,ok"), _request("b", "malformed,ok"), _request("c", "nochoices,500,ok")]
    completions = _backend(server).complete(requests, temperature=0.0)
    assert [c.text for c in completions] == ["answer for a", "answer for b", "answer for c"]
    assert server.attempts == Counter({"a": 3, "b": 2, "c": 3})


def test_exhausted_retries_come_back_as_errors_not_exceptions(server):
    requests = [_request("bad", "500"), _request("good", "ok"), _request("junk", "malformed")]
    completions = _backend(server, retries=2).complete(requests, temperature=0.0)
    assert completions[0].text is None and "HTTP 500" in completions[0].error and "3 attempts" in completions[0].error
    assert completions[1].text == "answer for good"
    assert completions[2].text is None and "malformed response body" in completions[2].error
    assert server.attempts["bad"] == 3 and server.attempts["junk"] == 3


def test_client_errors_are_not_retried(server):
    completion = _backend(server).complete([_request("refused", "400")], temperature=0.0)[0]
    assert completion.text is None and "HTTP 400" in completion.error and "not retried" in completion.error
    assert server.attempts["refused"] == 1


def test_timeouts_are_retried_then_reported(server):
    backend = _backend(server, timeout_s=0.3, retries=1)
    completions = backend.complete([_request("late", "slow:1.0,ok"), _request("never", "slow:1.0")],
                                   temperature=0.0)
    assert completions[0].text == "answer for late"  # the retry got a fast answer
    assert completions[1].text is None and "timed out after 0.3 s" in completions[1].error
    assert server.attempts["late"] == 2 and server.attempts["never"] == 2


def test_payload_has_png_data_urls_and_sampling_seed(server):
    request = ChatRequest(images=[Image.new("RGB", (8, 6), "blue"), Image.new("RGB", (4, 4))],
                          text="key=p;plan=ok", system="be strict", seed=1234)
    backend = _backend(server)
    backend.complete([request], temperature=0.0)
    backend.complete([request], temperature=0.7)
    greedy, sampled = server.bodies
    assert greedy["model"] == "tiny-judge" and greedy["max_tokens"] == 64 and greedy["temperature"] == 0.0
    assert "seed" not in greedy and sampled["seed"] == 1234 and sampled["temperature"] == 0.7
    assert greedy["messages"][0] == {"role": "system", "content": "be strict"}
    parts = greedy["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.format == "PNG" and decoded.size == (8, 6)


def test_model_is_discovered_when_not_named(server):
    backend = OpenAIBackend(server.url.removesuffix("/v1"))  # bare host: /v1 is added
    assert backend.model == "tiny-judge"
    assert backend.name == backend.identity == f"openai:{server.url}#tiny-judge"  # the server is part of the name


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(TeacherLoadError, match="cannot list models"):
        OpenAIBackend("http://127.0.0.1:9/v1", timeout_s=1.0)
    with pytest.raises(TeacherLoadError, match="not an http"):
        normalize_base_url("localhost:8000")


def test_works_when_called_inside_a_running_event_loop(server):
    async def inside():
        return _backend(server).complete([_request("loop", "ok")], temperature=0.0)

    assert asyncio.run(inside())[0].text == "answer for loop"


def test_teacher_and_pipeline_over_http(server, tmp_path):
    samples = write_noise_dataset(tmp_path, groups=2, edits_per_group=2)
    config = TeacherConfig(concurrency=3, http_retries=1, backoff_s=0.01)
    teacher = make_teacher(f"openai:{server.url}", config)  # model discovered from /models
    assert teacher.name == f"openai:{server.url}#tiny-judge"
    report = label_dataset(tmp_path, teacher, shard_size=10, progress=False)
    assert report.counts == Counter({"ok": 4})
    assert report.call_counts == {"sc": Counter({"ok": 4}), "pq": Counter({"ok": 4})}
    records = read_label_shards(labels_dir(tmp_path, teacher.name))
    assert sorted(j.sample_id for j in records) == sorted(s.sample_id for s in samples)
    for j in records:
        assert j.subscores == [21, 17, 19, 20] and j.boxes == [[0, 0, 333, 333]]
    # Two calls per edit: SC with [source, edited], PQ with [edited].
    image_counts = Counter(sum(p["type"] == "image_url" for p in b["messages"][-1]["content"]) for b in server.bodies)
    assert image_counts == Counter({2: 4, 1: 4})


# ---------------------------------------------------------------------------------------------------------------
# Hardening (issue 12): body cap, usage inside the per-item try, where the API key may go
# ---------------------------------------------------------------------------------------------------------------


def test_malformed_usage_is_one_retried_error_not_a_crash_of_the_batch(server):
    requests = [_request("u", "badusage,ok"), _request("v", "badusage"), _request("w", "ok")]
    completions = _backend(server, retries=1).complete(requests, temperature=0.0)
    assert completions[0].text == "answer for u" and completions[0].prompt_tokens == 100
    assert completions[1].text is None and "usage is str" in completions[1].error
    assert completions[2].text == "answer for w"
    assert server.attempts["u"] == 2 and server.attempts["v"] == 2


def test_response_bodies_over_the_cap_are_refused_unread(server):
    backend = _backend(server, max_response_bytes=16 * 1024)
    huge, fine = backend.complete([_request("big", "huge"), _request("small", "ok")], temperature=0.0)
    assert huge.text is None and "over the 16,384-byte cap" in huge.error and "not retried" in huge.error
    assert fine.text == "answer for small"
    assert server.attempts["big"] == 1


def test_streamed_bodies_without_a_length_are_cut_at_the_cap():
    """A chunked body states no Content-Length, so the cap is enforced while reading, by both readers."""
    chunks = [b"x" * 1000] * 5

    async def stream():
        for chunk in chunks:
            yield chunk

    async def read_async(limit):
        return await _read_capped(httpx.Response(200, content=stream()), limit)

    def read_sync(limit):
        response = httpx.Response(200, content=iter(chunks))
        assert "content-length" not in response.headers
        return _read_capped_sync(response, limit)

    for read in (read_sync, lambda limit: asyncio.run(read_async(limit))):
        assert read(5000) == b"x" * 5000
        with pytest.raises(BodyTooLarge, match="over 4,999 bytes"):
            read(4999)


def test_api_key_goes_to_loopback_servers(server):
    _backend(server, api_key="sk-test").complete([_request("k", "ok")], temperature=0.0)
    assert server.auth_headers == ["Bearer sk-test"]


@pytest.mark.parametrize("url,sent", [
    ("https://api.example.com/v1", True), ("http://localhost:8000/v1", True), ("http://[::1]:8000/v1", True),
    ("http://127.0.0.5:8000/v1", True), ("http://10.1.2.3:8000/v1", False), ("http://gpu-box:8000/v1", False),
])
def test_api_key_is_withheld_from_plain_http_to_other_hosts(url, sent):
    backend = OpenAIBackend(url, "m", api_key="sk-test")  # a named model: nothing is sent here
    assert ("Authorization" in backend.headers) is sent and backend.key_withheld is (not sent)
    if not sent:
        assert "was not sent" in backend._auth_hint(401)
        allowed = OpenAIBackend(url, "m", api_key="sk-test", allow_insecure_api_key=True)
        assert allowed.headers == {"Authorization": "Bearer sk-test"}


def test_config_carries_the_key_policy(monkeypatch):
    monkeypatch.setenv("SR_TEST_KEY", "sk-env")
    config = TeacherConfig(api_key_env="SR_TEST_KEY", max_response_bytes=4096)
    backend = OpenAIBackend.from_config("http://10.1.2.3:8000/v1", "m", config)
    assert backend.headers == {} and backend.max_response_bytes == 4096
    config = TeacherConfig(api_key_env="SR_TEST_KEY", allow_insecure_api_key=True)
    assert OpenAIBackend.from_config("http://10.1.2.3:8000/v1", "m", config).headers["Authorization"] == "Bearer sk-env"
