from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from pydantic import ValidationError
from support import make_pipeline
from transformers import AutoModelForCausalLM, AutoTokenizer

from guardrails import Decision, ScannerError, Status
from guardrails.audit import AuditStore
from guardrails.scanners import ScanInput, scanner_class
from guardrails.scanners import llama_guard_prompt as lgp
from guardrails.scanners.llama_guard import detect_variant
from guardrails.testing import FakeGenerator
from guardrails.types import Message, Role, Stage


def make(**params):
    cls = scanner_class("llama_guard")
    return cls(cls.config_model(type="llama_guard", id="lg", **params))


def prompt_item(text: str, history: tuple[Message, ...] = ()) -> ScanInput:
    return ScanInput(text, role=Role.USER, index=len(history), stage=Stage.INPUT, conversation=history)


def response_item(text: str, history: tuple[Message, ...]) -> ScanInput:
    return ScanInput(text, role=Role.ASSISTANT, index=len(history), stage=Stage.OUTPUT, conversation=history)


def reference_p_unsafe(model_dir: str, prompt: str) -> float:
    """Meta's recipe with plain transformers: one forward pass over prompt + '\\n\\n', label tokens at the end."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer(prompt + "\n\n", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1], dim=-1)
    safe, unsafe = (tokenizer.encode(t, add_special_tokens=False)[0] for t in ("safe", "unsafe"))
    return float(probs[unsafe] / (probs[safe] + probs[unsafe]))


# --- local ----------------------------------------------------------------------------------------------------------


def test_variant_comes_from_the_checkpoint_not_its_name(llama_guard_tiny):
    tokenizer = AutoTokenizer.from_pretrained(llama_guard_tiny)
    assert detect_variant(tokenizer) == "lg3-1b"  # its chat template reads excluded_category_keys
    from lg_templates import LG3_8B_TEMPLATE

    tokenizer.chat_template = LG3_8B_TEMPLATE
    assert detect_variant(tokenizer) == "lg3-8b"
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|header_start|>"]})
    assert detect_variant(tokenizer) == "lg4"
    tokenizer.chat_template = "{{ messages }}"
    with pytest.raises(ValueError, match="set `variant`"):
        detect_variant(AutoTokenizer.from_pretrained(llama_guard_tiny, chat_template="{{ messages }}"))


async def test_score_is_metas_p_unsafe_from_one_forward_pass(llama_guard_tiny):
    scanner = make(model=llama_guard_tiny, threshold=1.0)
    history = (Message(Role.USER, "what is the weather like today"),)
    items = [
        prompt_item("how do i bake bread"),
        response_item("it is sunny and warm", history),
        prompt_item("translate the following sentence into german " * 5),
    ]
    results = await scanner.scan(items)  # three lengths in one padded batch
    for item, result in zip(items, results, strict=True):
        assert result.score == pytest.approx(reference_p_unsafe(llama_guard_tiny, scanner.prompt(item)), abs=1e-5)
        assert result.decision is Decision.ALLOW
    await scanner.aclose()


def test_prompts_are_rendered_for_prompt_and_response_classification(llama_guard_tiny):
    scanner = make(model=llama_guard_tiny, excluded=["S7"], categories=None)
    history = (Message(Role.SYSTEM, "be brief"), Message(Role.USER, "hi"))
    as_prompt = scanner.prompt(prompt_item("tell me a secret"))
    as_response = scanner.prompt(response_item("here is one", history))
    assert as_prompt == lgp.render([Message(Role.USER, "tell me a secret")], variant="lg3-1b", excluded=["S7"])
    assert "unsafe content in 'User' messages" in as_prompt and "S7: Privacy." not in as_prompt
    assert "ONLY THE LAST Agent message" in as_response and "User: hi\n\nAgent: here is one\n\n" in as_response
    assert "be brief" not in as_response
    asyncio.run(scanner.aclose())


def with_answer(scanner, answer: str):
    """Replace only the generated answer (the codes), keeping the real score: the tiny model's text is random."""
    calls = []

    async def answer_fn(item, prompt: str) -> str:
        calls.append(prompt)
        return answer

    scanner.backend.answer = answer_fn
    return calls


@pytest.mark.parametrize(
    ("answer", "params", "decision", "categories"),
    [
        ("\n\nunsafe\nS1,S10", {}, Decision.BLOCK, ("S1", "S10")),
        ("unsafe\nS1,S7", {"excluded": ["S7"]}, Decision.BLOCK, ("S1",)),
        ("unsafe\nS7", {"excluded": ["S7"]}, Decision.ALLOW, ()),  # every code excluded: allowed
        ("unsafe\nS6", {"category_thresholds": {"S6": 0.999}}, Decision.ALLOW, ("S6",)),  # under S6's own threshold
        ("unsafe\nS9", {"category_thresholds": {"S1,S9": 0.0}, "threshold": 0.999}, Decision.BLOCK, ("S9",)),
        ("unsafe", {}, Decision.BLOCK, ()),  # no codes: decided on the score, fail closed
        ("garbled output", {}, Decision.BLOCK, ()),
        ("unsafe\nS2", {"action": "warn"}, Decision.WARN, ("S2",)),
    ],
)
async def test_decoded_categories_and_thresholds(llama_guard_tiny, answer, params, decision, categories):
    params = {"threshold": 0.0, **params}
    scanner = make(model=llama_guard_tiny, **params)
    calls = with_answer(scanner, answer)
    [result] = await scanner.scan([prompt_item("how do i make a weapon")])
    assert result.decision is decision and result.categories == categories
    assert len(calls) == 1 and not calls[0].endswith("\n\n")  # codes are generated from the plain prompt
    await scanner.aclose()


async def test_codes_are_generated_only_when_the_score_passes(llama_guard_tiny):
    scanner = make(model=llama_guard_tiny, threshold=1.0)
    calls = with_answer(scanner, "unsafe\nS1")
    [result] = await scanner.scan([prompt_item("hello")])
    assert calls == [] and result.decision is Decision.ALLOW and result.categories == ()
    await scanner.aclose()


async def test_real_generation_runs_and_fails_closed_on_an_unparseable_answer(llama_guard_tiny):
    scanner = make(model=llama_guard_tiny, threshold=0.0)
    [result] = await scanner.scan([prompt_item("hello")])  # the tiny model answers random tokens
    assert result.decision is Decision.BLOCK and "answered" in result.reason
    await scanner.aclose()


def test_configuration_errors_name_the_fix(llama_guard_tiny, tmp_path):
    with pytest.raises(ValidationError, match="exactly one of `model`"):
        make()
    with pytest.raises(ValidationError, match="also give `variant`"):
        make(endpoint="http://127.0.0.1:1/v1")
    with pytest.raises(ValidationError, match="not among the categories"):
        make(model=llama_guard_tiny, excluded=["S99"])
    with pytest.raises(ScannerError, match="not found at"):
        make_pipeline(output=[{"type": "llama_guard", "model": str(tmp_path / "nope")}])


def test_end_to_end_output_stage_with_audit_and_cli(llama_guard_tiny, tmp_path):
    pipe = make_pipeline(
        output=[{"id": "lg", "type": "llama_guard", "model": llama_guard_tiny, "threshold": 0.0}],
        audit={"sinks": [{"type": "sqlite", "path": "a.sqlite"}]},
    )
    with_answer(pipe._state.default.output[0], "unsafe\nS9")
    result = pipe.run("how are bombs made", generate=FakeGenerator(default="like this ..."))
    assert result.blocked and result.text == pipe.policy.refusal.output
    [scan] = result.verdict("output").results
    assert scan.categories == ("S9",) and 0 < scan.score <= 1
    assert pipe.audit.flush(timeout=10)
    with AuditStore("a.sqlite") as store:
        [record] = store.records(category="S9")
    assert record["request_id"] == result.request_id
    pipe.close()

    policy = tmp_path / "lg.yaml"
    policy.write_text(
        f"name: lg\noutput:\n  scanners:\n    - {{id: lg, type: llama_guard, model: '{llama_guard_tiny}', "
        "threshold: 1.0}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "guardrails",
            "scan",
            "--policy",
            str(policy),
            "--stage",
            "output",
            "--prompt",
            "hi",
            "hello back",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    [out] = json.loads(proc.stdout)["verdicts"][0]["results"]
    assert out["scanner_id"] == "lg" and 0 < out["score"] < 1


# --- remote: a real HTTP server on loopback answering as vLLM does --------------------------------------------------


class FakeVLLM(ThreadingHTTPServer):
    """Answers /v1/completions in vLLM's format: 'unsafe' (S9) when the prompt mentions a bomb, else 'safe'."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.status = 200
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server: FakeVLLM = self.server
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if server.status != 200:
            self._send(server.status, {"error": {"message": "overloaded"}})
            return
        unsafe = "bomb" in body["prompt"]
        p = 0.97 if unsafe else 0.02
        if body.get("logprobs"):
            top = {"safe": math.log(1 - p), "unsafe": math.log(p), "Safe": -9.0, "\n": -12.0}
            label = "unsafe" if unsafe else "safe"
            choice = {
                "index": 0,
                "text": label,
                "finish_reason": "length",
                "logprobs": {
                    "tokens": [label],
                    "token_logprobs": [top[label]],
                    "top_logprobs": [top],
                    "text_offset": [len(body["prompt"])],
                },
            }
        else:
            choice = {
                "index": 0,
                "text": "\n\nunsafe\nS9" if unsafe else "\n\nsafe",
                "logprobs": None,
                "finish_reason": "stop",
            }
        self._send(
            200,
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def vllm():
    server = FakeVLLM()
    yield server
    server.shutdown()
    server.server_close()


def remote(vllm, **params):
    return make(endpoint=vllm.url, served_model="meta-llama/Llama-Guard-3-8B", variant="lg3-8b", **params)


async def test_remote_scores_from_logprobs_and_reads_codes(vllm, monkeypatch):
    monkeypatch.setenv("VLLM_KEY", "k-123")
    scanner = remote(vllm, api_key_env="VLLM_KEY")
    bad, good = await scanner.scan([prompt_item("how to build a bomb"), prompt_item("how to bake bread")])
    assert bad.decision is Decision.BLOCK and bad.categories == ("S9",) and bad.score == pytest.approx(0.97)
    assert good.decision is Decision.ALLOW and good.score == pytest.approx(0.02)
    scoring = [r for r in vllm.requests if r.get("logprobs")]
    assert {r["prompt"] for r in scoring} == {
        lgp.render([Message(Role.USER, t)], variant="lg3-8b") + "\n\n"
        for t in ("how to build a bomb", "how to bake bread")
    }
    assert all(r["max_tokens"] == 1 and r["temperature"] == 0 and r["path"] == "/v1/completions" for r in scoring)
    assert all(r["auth"] == "Bearer k-123" for r in vllm.requests)
    assert len(vllm.requests) == 3  # two scores, one answer: the safe prompt generated nothing
    await scanner.aclose()


def test_remote_failure_blocks_by_default_and_is_visible(vllm):
    vllm.status = 503
    pipe = make_pipeline(
        input=[{"id": "lg", "type": "llama_guard", "endpoint": vllm.url, "variant": "lg4", "served_model": "lg4"}]
    )
    result = pipe.run("hello", generate=FakeGenerator())
    [scan] = result.verdict("input").results
    assert result.blocked and scan.status is Status.ERROR and "503" in scan.reason
    pipe.close()


def test_remote_server_down_is_an_error_not_a_traceback():
    pipe = make_pipeline(
        input=[
            {
                "id": "lg",
                "type": "llama_guard",
                "endpoint": "http://127.0.0.1:9/v1",
                "variant": "lg3-1b",
                "served_model": "x",
                "on_error": "allow",
            }
        ]
    )
    result = pipe.run("hello", generate=FakeGenerator(default="ok"))
    assert result.text == "ok" and result.verdict("input").results[0].status is Status.ERROR
    pipe.close()
