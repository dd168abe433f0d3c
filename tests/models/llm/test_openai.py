"""The openai backend against a fake server on 127.0.0.1 (stdlib http.server, no network)."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from florec.models.llm import LLMConfig, build_llm
from florec.models.llm.openai_backend import LLMServerError, letter_distribution

# Recorded from llama-server (chat-style logprobs): a newline token outranks two letters.
LLAMA_SERVER_CHAT = {
    "choices": [{"finish_reason": "length", "index": 0,
                 "message": {"role": "assistant", "content": "B"},
                 "logprobs": {"content": [{
                     "id": 50, "token": "B", "bytes": [66], "logprob": -0.6,
                     "top_logprobs": [
                         {"id": 50, "token": "B", "bytes": [66], "logprob": -0.6},
                         {"id": 198, "token": "\n", "bytes": [10], "logprob": -1.2},
                         {"id": 49, "token": "A", "bytes": [65], "logprob": -1.9},
                         {"id": 51, "token": "C", "bytes": [67], "logprob": -3.1}]}]}}],
    "created": 1764979200, "model": "smollm2", "object": "chat.completion",
    "usage": {"completion_tokens": 1, "prompt_tokens": 57, "total_tokens": 58},
    "id": "chatcmpl-x1"}
# Recorded from vLLM's legacy /v1/completions: top_logprobs as {token: logprob}.
VLLM_LEGACY = {
    "id": "cmpl-7", "object": "text_completion", "created": 1764979200, "model": "smollm2",
    "choices": [{"index": 0, "text": "A", "finish_reason": "length", "logprobs": {
        "text_offset": [0], "token_logprobs": [-0.4], "tokens": ["A"],
        "top_logprobs": [{"A": -0.4, " C": -1.4, "\n\n": -2.0, "B": -2.6}]}}],
    "usage": {"prompt_tokens": 61, "total_tokens": 62, "completion_tokens": 1}}
GENERATE = {"choices": [{"index": 0, "message": {"role": "assistant", "content": " Likes sci-fi. "},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}}


def _expected(pairs: dict) -> np.ndarray:
    mass = np.array([math.exp(v) for v in pairs.values()])
    return mass / mass.sum()


@pytest.fixture
def server():
    """A fake OpenAI-compatible server; ``server.fail`` makes the next N requests answer 503."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body, self.headers.get("Authorization")))
            if srv.fail > 0:
                srv.fail -= 1
                self.send_response(503)
                self.end_headers()
                return
            if self.path.endswith("/completions") and "prompt" in body:
                reply = VLLM_LEGACY
            elif body.get("logprobs"):
                reply = LLAMA_SERVER_CHAT
            else:
                reply = GENERATE
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.fail, srv.seen = 0, seen
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _cfg(url: str, **kw) -> LLMConfig:
    return LLMConfig(backend="openai", base_url=url, model="smollm2", cache=False,
                     progress=False, retries=2, timeout_s=5, api_key_env="FLOREC_TEST_KEY", **kw)


def test_llama_server_chat_logprobs_are_renormalised_over_the_letters(server):
    p = build_llm(_cfg(server.url)).choice_distribution(["pick", "pick again"], 3)
    want = _expected({"A": -1.9, "B": -0.6, "C": -3.1})
    np.testing.assert_allclose(p, [want, want], atol=1e-12)
    path, body, _ = server.seen[0]
    assert path == "/v1/chat/completions" and body["logprobs"] is True
    assert body["max_tokens"] == 1 and body["messages"][-1]["content"] in ("pick", "pick again")


def test_vllm_legacy_logprobs_are_parsed_and_spaced_letters_pooled(server):
    llm = build_llm(_cfg(server.url, openai_endpoint="completions"))
    p = llm.choice_distribution(["pick"], 3)
    np.testing.assert_allclose(p[0], _expected({"A": -0.4, "B": -2.6, "C": -1.4}), atol=1e-12)
    _, body, _ = server.seen[0]
    assert body["prompt"].endswith("<|im_start|>assistant\n") and body["logprobs"] == 20
    assert llm.stats.prompt_tokens == 61 and llm.stats.llm_calls == 1


def test_a_letter_missing_from_the_top_list_gets_zero_and_none_gives_uniform():
    np.testing.assert_allclose(letter_distribution({"A": math.log(0.3), "\n": -0.1}, "ABC"),
                               [1.0, 0.0, 0.0])
    np.testing.assert_allclose(letter_distribution({"\n": -0.1}, "ABCD"), [0.25] * 4)


def test_generate_reads_content_usage_and_sends_the_key_from_the_environment(server,
                                                                            monkeypatch):
    monkeypatch.setenv("FLOREC_TEST_KEY", "sk-test")
    llm = build_llm(_cfg(server.url, max_concurrency=3))
    out = llm.generate(["a", "b", "c"], max_new_tokens=8, system="Be brief.")
    assert out == ["Likes sci-fi."] * 3
    assert llm.stats.completion_tokens == 12 and llm.stats.llm_calls == 3
    _, body, auth = server.seen[0]
    assert auth == "Bearer sk-test" and body["messages"][0]["role"] == "system"


def test_busy_answers_are_retried(server):
    server.fail = 2
    p = build_llm(_cfg(server.url)).choice_distribution(["pick"], 2)
    assert p.shape == (1, 2) and len(server.seen) == 3


def test_an_unreachable_server_is_one_line_naming_its_url():
    url = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    llm = build_llm(_cfg(url).with_(retries=0))
    with pytest.raises(LLMServerError, match=r"127\.0\.0\.1:9/v1 is unreachable") as err:
        llm.generate(["hello"])
    assert "\n" not in str(err.value)


def test_the_openai_backend_cannot_fine_tune(server):
    with pytest.raises(NotImplementedError, match="cannot fine-tune"):
        build_llm(_cfg(server.url)).finetune_choices(["a"], [0], 2)
