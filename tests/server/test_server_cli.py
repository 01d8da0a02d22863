"""Settings from the environment, ``serve`` argument handling, ``hash-key``, and the client-side example."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from sidecar import ROOT

from server import Settings
from server.auth import KeyRing
from server.cli import hash_key, main, serve
from server.settings import KeyEntry


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("GUARDRAILS_UPSTREAM_URL", "http://model:8000/v1")
    monkeypatch.setenv("GUARDRAILS_API_KEYS", '[{"hash": "sha256:' + "0" * 64 + '", "tenant": "acme"}]')
    monkeypatch.setenv("GUARDRAILS_STREAM_MODE", "async")
    monkeypatch.setenv("GUARDRAILS_PORT", "9000")
    settings = Settings(port=9100)  # arguments win over the environment
    assert settings.upstream_url == "http://model:8000/v1" and settings.stream_mode == "async"
    assert settings.port == 9100 and settings.api_keys[0].tenant == "acme"


def test_a_raw_key_in_the_environment_is_kept_only_as_its_hash(monkeypatch):
    monkeypatch.setenv("GUARDRAILS_API_KEY", "gr-raw-key")
    settings = Settings()
    entries = settings.key_entries()
    assert entries[0].hash.startswith("sha256:") and "gr-raw-key" not in entries[0].model_dump_json()
    assert KeyRing(entries, settings).resolve("gr-raw-key").tenant == "default"


def test_keys_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"hash": "sha256:" + "a" * 64, "tenant": "t", "route": "strict"}]}))
    assert Settings(keys_file=path).key_entries()[0].route == "strict"
    path.write_text("- {hash: 'plain-text-key'}\n")
    with pytest.raises(ValueError, match="key entry 0"):
        Settings(keys_file=path).key_entries()


def test_one_upstream_only():
    with pytest.raises(ValueError, match="not both"):
        Settings(upstream_url="http://a/v1", model_path="/models/x")


def test_serve_refuses_to_start_without_keys(capsys, monkeypatch):
    for name in list(os.environ):
        if name.startswith("GUARDRAILS_"):
            monkeypatch.delenv(name)
    assert serve(["--upstream", "http://127.0.0.1:9/v1"]) == 2
    assert "no API keys configured" in capsys.readouterr().err


def test_serve_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as caught:
        serve(["--upstream", "http://a/v1", "--model", "/m"])
    assert caught.value.code == 2
    assert serve(["--port", "70000"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_hash_key_prints_an_entry_for_a_new_key(capsys):
    assert hash_key(["--tenant", "acme", "--route", "strict"]) == 0
    comment, entry = capsys.readouterr().out.strip().splitlines()
    key = comment.rsplit(" ", 1)[1]
    parsed = KeyEntry.model_validate(yaml.safe_load(entry)[0])
    assert parsed.tenant == "acme" and parsed.route == "strict"
    assert KeyRing([parsed], Settings()).resolve(key).tenant == "acme"


def test_main_without_a_command():
    assert main([]) == 2


def test_the_openai_client_example_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GUARDRAILS_URL", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "openai_client.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "allowed: You said: hello" in proc.stdout
    assert "blocked: content_filter" in proc.stdout and "injection-phrases" in proc.stdout
    assert "streamed (stop): Sure. Your access key id is [REDACTED:aws_access_key_id]" in proc.stdout
    assert "AKIAQ3EGRV7ZXB2MN4PK" not in proc.stdout
