from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guardrails import Pipeline, PolicyError, ScannerError
from guardrails.policy import builtin_policies, load_policy, load_routes, policy_from_dict
from guardrails.testing import FakeGenerator

BUILTINS = ["default", "strict", "code-assistant", "shadow"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_policies_load_and_build(name):
    assert name in builtin_policies()
    policy = load_policy(name)
    assert policy.name == name and len(policy.hash) == 64
    with Pipeline.from_policy(name) as pipe:
        assert pipe.run("hello", generate=FakeGenerator(default="hi")).text == "hi"


def test_builtin_policies_differ_and_hash_is_stable():
    hashes = {name: load_policy(name).hash for name in BUILTINS}
    assert len(set(hashes.values())) == len(BUILTINS)
    assert load_policy("default").hash == hashes["default"]


def test_hash_ignores_formatting_but_not_meaning(tmp_path):
    a = write(tmp_path, "a.yaml", "name: p\ninput:\n  scanners: [{type: regex, patterns: [x]}]\n")
    b = write(tmp_path, "b.yaml", "# comment\nname: p\ninput:\n  scanners:\n    - patterns: ['x']\n      type: regex\n")
    c = write(tmp_path, "c.yaml", "name: p\ninput:\n  scanners: [{type: regex, patterns: [y]}]\n")
    assert load_policy(a).hash == load_policy(b).hash != load_policy(c).hash


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: p\nthreshold: 1\n",
            [r"x\.yaml:2:1: threshold: unknown key 'threshold'", "allowed keys: audit, description"],
        ),
        (
            "name: p\ninput:\n  scanners:\n    - type: regex\n      patterns: [a]\n      threshhold: 0.2\n",
            [r"x\.yaml:6:7: input\.scanners\[0\]\.threshhold: unknown key", "did you mean 'threshold'"],
        ),
        (
            "name: p\ninput:\n  scanners:\n    - id: s\n      type: regexx\n",
            [r"x\.yaml:5:7: input\.scanners\[s\]\.type: unknown scanner type 'regexx' \(did you mean 'regex'\?\)"],
        ),
        (
            "name: p\ninput:\n  scanners:\n    - {type: regex, patterns: ['(']}\n",
            [r"x\.yaml:4:21: input\.scanners\[0\]\.patterns: invalid regular expression"],
        ),
        ("name: p\noutput:\n  mode: loud\n", [r"x\.yaml:3:3: output\.mode: Input should be 'enforce' or 'shadow'"]),
        ("name: p\ninput:\n  scanners:\n    - {type: static, threshold: 2}\n", [r"threshold: Input should be less"]),
        ("description: no name\n", [r"x\.yaml:1:1: name: required key is missing"]),
        ("name: p\nname: q\n", [r"x\.yaml:2:1: key 'name' appears twice"]),
        ("name: [unclosed\n", [r"x\.yaml:2:1: invalid YAML"]),
        ("", ["policy file is empty"]),
        ("- a\n- b\n", ["a policy is a mapping"]),
        (
            "name: p\ninput:\n  scanners:\n    - {type: static}\n    - {type: static}\n",
            ["two scanners share the id 'static'"],
        ),
        ("name: p\ninput:\n  scanners:\n    - {type: secrets, kinds: [aws, github_token]}\n", ["unknown kinds"]),
    ],
)
def test_invalid_policies_name_file_line_and_key(tmp_path, text, expected):
    path = write(tmp_path, "x.yaml", text) if text else tmp_path / "x.yaml"
    if not text:
        path.write_text("")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    for pattern in expected:
        assert pytest.importorskip("re").search(pattern, str(info.value)), str(info.value)


def test_non_utf8_and_missing_files(tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(binary)
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match="built-ins: "):
        load_policy("no-such-builtin")


def test_extends_overrides_disables_and_appends_scanners(tmp_path):
    write(
        tmp_path,
        "base.yaml",
        """
        name: base
        refusal: {input: base refusal}
        input:
          scanners:
            - {id: a, type: static, score: 0.7, threshold: 0.9}
            - {id: b, type: static}
        routes: {other: base.yaml}
        """,
    )
    child = write(
        tmp_path,
        "child.yaml",
        """
        name: child
        extends: base.yaml
        input:
          scanners:
            - {id: a, threshold: 0.5}
            - {id: b, enabled: false}
            - {id: c, type: regex, patterns: [x]}
        """,
    )
    policy = load_policy(child)
    ids = [s.scanner_id for s in policy.input.scanners]
    assert ids == ["a", "c"]
    a = policy.input.scanners[0]
    assert (a.threshold, a.score, a.type) == (0.5, 0.7, "static")
    assert policy.refusal.input == "base refusal"
    assert policy.routes == {}  # routes are not inherited
    pipe = Pipeline(policy)
    assert pipe.run("hi", generate=FakeGenerator()).blocked  # score 0.7 >= the overridden 0.5


def test_errors_in_an_inherited_entry_point_at_the_child_file(tmp_path):
    write(tmp_path, "base.yaml", "name: base\ninput:\n  scanners:\n    - {id: a, type: static}\n")
    child = write(tmp_path, "child.yaml", "name: c\nextends: base.yaml\ninput:\n  scanners:\n    - {id: a, scor: 1}\n")
    with pytest.raises(PolicyError, match=r"child\.yaml:5:15: input\.scanners\[a\]\.scor: unknown key 'scor'"):
        load_policy(child)


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nextends: b.yaml\n")
    write(tmp_path, "b.yaml", "name: b\nextends: a.yaml\n")
    with pytest.raises(PolicyError, match="inheritance cycle"):
        load_policy(tmp_path / "a.yaml")


def test_routes_load_and_select_policies(tmp_path):
    write(
        tmp_path,
        "tenant.yaml",
        "name: tenant\nrefusal: {input: tenant says no}\ninput:\n  scanners: [{type: static, score: 1}]\n",
    )
    main = write(tmp_path, "main.yaml", "name: main\nroutes: {acme: tenant.yaml}\n")
    pipe = Pipeline.from_policy(main)
    assert pipe.routes == ("acme",)
    assert not pipe.run("hi", generate=FakeGenerator()).blocked
    routed = pipe.run("hi", generate=FakeGenerator(), route="acme")
    assert routed.text == "tenant says no" and routed.policy_name == "tenant" and routed.route == "acme"
    with pytest.raises(PolicyError, match="unknown route 'nope'.*acme"):
        pipe.run("hi", generate=FakeGenerator(), route="nope")


def test_route_policy_declaring_routes_is_rejected(tmp_path):
    write(tmp_path, "inner.yaml", "name: inner\nroutes: {x: inner.yaml}\n")
    main = write(tmp_path, "main.yaml", "name: main\nroutes: {a: inner.yaml}\n")
    with pytest.raises(PolicyError, match="routes are declared only in the policy a pipeline is built from"):
        load_routes(load_policy(main))


def test_reload_swaps_atomically_and_a_failed_reload_keeps_the_old_policy(tmp_path):
    path = write(tmp_path, "p.yaml", "name: v1\ninput:\n  scanners: [{type: regex, patterns: [alpha]}]\n")
    pipe = Pipeline.from_policy(path)
    old_hash = pipe.policy.hash
    assert pipe.run("alpha", generate=FakeGenerator()).blocked

    path.write_text("name: v2\ninput:\n  scanners: [{type: regex, patterns: [beta]}]\n")
    pipe.reload()
    assert pipe.policy.name == "v2" and pipe.policy.hash != old_hash
    assert not pipe.run("alpha", generate=FakeGenerator()).blocked
    assert pipe.run("beta", generate=FakeGenerator()).blocked

    path.write_text("name: v3\ninput:\n  scanners: [{type: regex, patterns: [beta], bogus: 1}]\n")
    with pytest.raises(PolicyError, match=r"(?s)still enforcing the previous policy.*bogus"):
        pipe.reload()
    assert pipe.policy.name == "v2"
    assert pipe.run("beta", generate=FakeGenerator()).blocked


def test_policy_from_dict_validates_and_rejects_extends():
    policy = policy_from_dict({"name": "d", "input": {"scanners": [{"type": "static"}]}})
    assert policy.input.scanners[0].scanner_id == "static"
    with pytest.raises(PolicyError, match="extends is only followed for policy files"):
        policy_from_dict({"name": "d", "extends": "default"})


@pytest.mark.parametrize("name", ["llama", "cascade"])
def test_policies_naming_metas_checkpoints_validate_and_say_what_is_missing(name):
    policy = load_policy(name)
    assert policy.name == name
    with pytest.raises(ScannerError, match="not found .*hf download meta-llama/"):
        Pipeline.from_policy(name)


def test_default_and_llama_differ_only_in_the_model_lines():
    default, llama = load_policy("default"), load_policy("llama")
    for stage in ("input", "output"):
        ours = {s.scanner_id: s for s in getattr(default, stage).scanners}
        theirs = {s.scanner_id: s for s in getattr(llama, stage).scanners}
        assert ours.keys() == theirs.keys()
        for sid, scanner in theirs.items():
            changed = {k for k in type(scanner).model_fields if getattr(scanner, k) != getattr(ours[sid], k)}
            assert changed <= {"model", "threshold", "thresholds"}, (sid, changed)
