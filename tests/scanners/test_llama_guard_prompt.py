"""Golden tests for Llama Guard prompt rendering and answer parsing.

The strongest checks render Meta's own chat templates (kept verbatim below) with jinja2, the way transformers'
``apply_chat_template`` does, and compare with :func:`render` character for character. LG4's template source was not
found; its golden strings are a captured ``apply_chat_template`` output of the checkpoint.
"""

# ruff: noqa: E501  (the templates and golden prompts are kept verbatim, long lines included)

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import guardrails.scanners.llama_guard_prompt as lgp
from guardrails.scanners.llama_guard_prompt import (
    CATEGORY_NAMES,
    VARIANTS,
    conversation_turns,
    default_categories,
    label_tokens,
    parse_answer,
    render,
    rendered_categories,
    score_suffix,
)
from guardrails.types import Message, Role


def user(text: str) -> Message:
    return Message(Role.USER, text)


def assistant(text: str) -> Message:
    return Message(Role.ASSISTANT, text)


def tool(text: str, name: str | None = None) -> Message:
    return Message(Role.TOOL, text, name=name, tool_call_id="call_1")


def system(text: str) -> Message:
    return Message(Role.SYSTEM, text)


# Meta's templates, verbatim, live in tests/lg_templates.py (shared with the checkpoints the tests build).
from lg_templates import LG3_1B_TEMPLATE, LG3_8B_TEMPLATE  # noqa: E402


def _jinja2_render(template: str, messages: list[dict], **kwargs: object) -> str:
    """Render as transformers does: a sandboxed environment with trim_blocks/lstrip_blocks and raise_exception."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **kwargs)


def _transformers_render(template: str, messages: list[dict], **kwargs: object) -> str:
    """transformers' own renderer (what apply_chat_template calls), when the models extra is installed."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    rendered, _ = utils.render_jinja_template([messages], chat_template=template, add_generation_prompt=True, **kwargs)
    return rendered[0]


@pytest.fixture(params=[_jinja2_render, _transformers_render], ids=["jinja2", "transformers"])
def template_render(request):
    return request.param


CONVERSATIONS = {
    "prompt": [user("How do I make a bomb?")],
    "response": [user("How do I make a bomb?"), assistant("I can't help with that.")],
    "three-turns": [user("Hi"), assistant("Hello! How can I help?"), user("Tell me how to pick a lock.")],
    "four-turns": [user("Hi"), assistant("Hello!"), user("What's 2+2?"), assistant("4")],
    "whitespace": [user("  \n padded question \t\n"), assistant("\n\nanswer with trailing spaces   ")],
    "multiline": [user("line one\nline two\n\n  indented line\n- a bullet"), assistant("Sure:\n1. first\n2. second")],
    "template-like": [user("{{ 7*7 }} {% raw %} <|eot_id|> 'quotes' \"double\" \\n")],
    "unicode": [user("Wie baue ich eine Bombe? 爆弾の作り方 \u200b"), assistant("Nein.")],
}


def _as_hf_messages(messages: list[Message], *, parts: bool) -> list[dict]:
    # The 1B template reads content parts ([{"type": "text", ...}]); the 8B template reads a plain string.
    return [
        {"role": m.role.value, "content": [{"type": "text", "text": m.content}] if parts else m.content}
        for m in messages
    ]


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_lg3_1b_matches_official_template(name, template_render):
    messages = CONVERSATIONS[name]
    expected = template_render(LG3_1B_TEMPLATE, _as_hf_messages(messages, parts=True), excluded_category_keys=[])
    assert render(messages, variant="lg3-1b") == expected


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_lg3_8b_matches_official_template(name, template_render):
    messages = CONVERSATIONS[name]
    expected = template_render(LG3_8B_TEMPLATE, _as_hf_messages(messages, parts=False))
    assert render(messages, variant="lg3-8b") == expected


@pytest.mark.parametrize(
    ("categories", "excluded"),
    [
        (None, ["S6", "S13"]),
        (None, ["S1"]),
        (
            {
                "S1": "Violent Crimes.",
                "S2": "Fraud.\nAI models should not help anyone defraud people, e.g. phishing or fake invoices.",
                "S9": "Indiscriminate Weapons.",
            },
            ["S9"],
        ),
        ({"S1": "My custom category"}, []),
    ],
)
@pytest.mark.parametrize("name", ["prompt", "response", "three-turns"])
def test_lg3_1b_custom_and_excluded_categories_match_official_template(name, categories, excluded, template_render):
    messages = CONVERSATIONS[name]
    kwargs: dict[str, object] = {"excluded_category_keys": excluded}
    if categories is not None:
        kwargs["categories"] = categories
    expected = template_render(LG3_1B_TEMPLATE, _as_hf_messages(messages, parts=True), **kwargs)
    assert render(messages, variant="lg3-1b", categories=categories, excluded=excluded) == expected


def test_official_templates_reject_what_conversation_turns_fixes(template_render):
    # The reason conversation_turns exists: the templates raise on two user turns in a row.
    jinja2 = pytest.importorskip("jinja2")
    hf = _as_hf_messages([user("a"), user("b")], parts=False)
    with pytest.raises(jinja2.exceptions.TemplateError, match="alternate"):
        template_render(LG3_8B_TEMPLATE, hf)
    merged = [{"role": "user", "content": "a\n\nb"}]
    assert render([user("a"), user("b")], variant="lg3-8b") == template_render(LG3_8B_TEMPLATE, merged)


# --- Golden strings ---------------------------------------------------------------------------------------------------

# The spec's LG3 example (shared/spec/llama-guard.md, "The prompt"), copied as it is shown there.
SPEC_LG3_EXAMPLE = """<|begin_of_text|><|start_header_id|>user<|end_header_id|>

Task: Check if there is unsafe content in 'Agent' messages in conversations according our safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
S1: Violent Crimes.
S2: Non-Violent Crimes.
S3: Sex Crimes.
S4: Child Exploitation.
S5: Defamation.
S6: Specialized Advice.
S7: Privacy.
S8: Intellectual Property.
S9: Indiscriminate Weapons.
S10: Hate.
S11: Self-Harm.
S12: Sexual Content.
S13: Elections.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

User: What is the recipe for mayonnaise?

Agent: Ingredients: ...

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST Agent message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories. <|eot_id|><|start_header_id|>assistant<|end_header_id|>"""


def test_spec_lg3_example_character_for_character():
    conversation = [user("What is the recipe for mayonnaise?"), assistant("Ingredients: ...")]
    assert render(conversation, variant="lg3-1b") == SPEC_LG3_EXAMPLE


LG3_CATEGORIES_14 = """S1: Violent Crimes.
S2: Non-Violent Crimes.
S3: Sex Crimes.
S4: Child Exploitation.
S5: Defamation.
S6: Specialized Advice.
S7: Privacy.
S8: Intellectual Property.
S9: Indiscriminate Weapons.
S10: Hate.
S11: Self-Harm.
S12: Sexual Content.
S13: Elections.
S14: Code Interpreter Abuse.
"""

LG3_8B_PROMPT_CLASSIFICATION = (
    " <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy with the below categories.\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n" + LG3_CATEGORIES_14 + "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n"
    "User: Write a script that deletes every file on the host.\n\n"
    "<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
)


def test_lg3_8b_prompt_classification_lists_s14():
    prompt = render([user("Write a script that deletes every file on the host.")], variant="lg3-8b")
    assert prompt == LG3_8B_PROMPT_CLASSIFICATION
    assert "S14: Code Interpreter Abuse.\n<END UNSAFE CONTENT CATEGORIES>" in prompt


def test_lg3_1b_prompt_classification_has_no_s14_and_no_agent_turn():
    prompt = render([user("  How do I bake bread?  ")], variant="lg3-1b")
    assert "'User' messages" in prompt and "ONLY THE LAST User message" in prompt
    assert "<BEGIN CONVERSATION>\n\nUser: How do I bake bread?\n\n<END CONVERSATION>" in prompt
    assert "Agent:" not in prompt and "S14" not in prompt
    assert "S13: Elections.\n<END UNSAFE CONTENT CATEGORIES>" in prompt


# Captured output of processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) for
# meta-llama/Llama-Guard-4-12B (a public test script that also logs the generated ids [368, 72110, ...]).
# "\\n\\n" is the literal backslash-n pair the template prints after each message.
LG4_PROMPT_CLASSIFICATION = """<|begin_of_text|><|header_start|>user<|header_end|>

Task: Check if there is unsafe content in 'User' messages in conversations according to our safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
S1: Violent Crimes.
S2: Non-Violent Crimes.
S3: Sex Crimes.
S4: Child Exploitation.
S5: Defamation.
S6: Specialized Advice.
S7: Privacy.
S8: Intellectual Property.
S9: Indiscriminate Weapons.
S10: Hate.
S11: Self-Harm.
S12: Sexual Content.
S13: Elections.
S14: Code Interpreter Abuse.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>
User: how do I make a bomb?\\n\\n

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST User message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories. <|eot|><|header_start|>assistant<|header_end|>"""

LG4_RESPONSE_CLASSIFICATION = """<|begin_of_text|><|header_start|>user<|header_end|>

Task: Check if there is unsafe content in 'Agent' messages in conversations according to our safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
S1: Violent Crimes.
S2: Non-Violent Crimes.
S3: Sex Crimes.
S4: Child Exploitation.
S5: Defamation.
S6: Specialized Advice.
S7: Privacy.
S8: Intellectual Property.
S9: Indiscriminate Weapons.
S10: Hate.
S11: Self-Harm.
S12: Sexual Content.
S13: Elections.
S14: Code Interpreter Abuse.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>
User: how do I make a bomb?\\n\\n

Agent: As a responsible artificial intelligence system, I regret that I am unable to fulfill your request.\\n\\n

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST Agent message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories. <|eot|><|header_start|>assistant<|header_end|>"""


def test_lg4_prompt_classification_matches_captured_output():
    assert render([user("how do I make a bomb?")], variant="lg4") == LG4_PROMPT_CLASSIFICATION


def test_lg4_response_classification_matches_captured_output():
    conversation = [
        user("how do I make a bomb?"),
        assistant(
            "As a responsible artificial intelligence system, I regret that I am unable to fulfill your request."
        ),
    ]
    prompt = render(conversation, variant="lg4")
    assert prompt == LG4_RESPONSE_CLASSIFICATION
    # The details the brief names, spelled out so a failure says which one broke.
    assert "<BEGIN CONVERSATION>\nUser:" in prompt
    assert "request.\\n\\n\n\n<END CONVERSATION>" in prompt
    assert "according to our safety policy" in prompt and "according our" not in prompt


@pytest.mark.parametrize(
    ("variant", "tail"),
    [
        ("lg3-1b", "categories. <|eot_id|><|start_header_id|>assistant<|end_header_id|>"),
        ("lg3-8b", "categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"),
        ("lg4", "categories. <|eot|><|header_start|>assistant<|header_end|>"),
    ],
)
def test_prompt_ends_where_the_model_generates(variant, tail):
    prompt = render([user("hi")], variant=variant)
    assert prompt.endswith(tail)
    assert "\n - First line must read 'safe' or 'unsafe'.\n - If unsafe," in prompt


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    ("conversation", "role"),
    [
        ([user("q")], "User"),
        ([user("q"), assistant("a")], "Agent"),
        ([user("q"), assistant("a"), user("q2")], "User"),
        ([system("be nice"), user("q"), assistant("a")], "Agent"),
        ([user("q"), assistant(""), tool("result", "search")], "User"),
        ([user("q"), assistant(""), tool("result", "search"), assistant("answer")], "Agent"),
        ([assistant("a standalone response")], "Agent"),
    ],
)
def test_checked_role_follows_the_last_turn(variant, conversation, role):
    prompt = render(conversation, variant=variant)
    assert f"unsafe content in '{role}' messages" in prompt
    assert f"ONLY THE LAST {role} message" in prompt


CUSTOM = {
    "S1": "Violent Crimes.\nAI models should not create content that enables, encourages, or excuses violent crimes.",
    "S15": "Hacking.\nAI models should not help anyone break into computer systems they do not own.",
}
CUSTOM_BLOCK = (
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    "S1: Violent Crimes.\nAI models should not create content that enables, encourages, or excuses violent crimes.\n"
    "S15: Hacking.\nAI models should not help anyone break into computer systems they do not own.\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n"
)


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_categories_with_descriptions_replace_the_defaults(variant):
    custom = render([user("q")], variant=variant, categories=CUSTOM)
    default = render([user("q")], variant=variant)
    assert CUSTOM_BLOCK in custom
    assert "S2:" not in custom
    # Only the category block changes: the rest is the variant's own shape (LG3-8B's leading space included).
    start = default.index("<BEGIN UNSAFE CONTENT CATEGORIES>")
    end = default.index("<BEGIN CONVERSATION>")
    assert custom == default[:start] + CUSTOM_BLOCK + default[end:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_excluded_categories_are_left_out_in_order(variant):
    prompt = render([user("q")], variant=variant, excluded=["S6", "S13"])
    block = prompt[prompt.index("<BEGIN UNSAFE CONTENT CATEGORIES>\n") : prompt.index("<END UNSAFE")]
    codes = [line.split(":")[0] for line in block.splitlines()[1:]]
    expected = [c for c in default_categories(variant) if c not in ("S6", "S13")]
    assert codes == expected
    assert "Specialized Advice" not in prompt and "Elections" not in prompt


def test_excluded_applies_to_custom_categories():
    prompt = render([user("q")], variant="lg4", categories=CUSTOM, excluded=["S1"])
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>\nS15: Hacking." in prompt
    assert "S1:" not in prompt


def test_tool_turns_render_as_user_text():
    conversation = [
        system("You are a travel agent."),
        user("What's the weather in Paris?"),
        assistant(""),  # a bare tool call: Message carries no structured tool calls
        tool('{"temp_c": 21, "sky": "clear"}', "get_weather"),
        assistant("It's 21°C and clear in Paris."),
    ]
    prompt = render(conversation, variant="lg3-1b")
    assert (
        "<BEGIN CONVERSATION>\n\n"
        "User: What's the weather in Paris?\n\n"
        '[Tool result from get_weather]\n{"temp_c": 21, "sky": "clear"}\n\n'
        "Agent: It's 21°C and clear in Paris.\n\n"
        "<END CONVERSATION>"
    ) in prompt
    assert "travel agent" not in prompt


# --- conversation_turns -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "turns"),
    [
        ([user("q")], [("User", "q")]),
        ([system("sys"), user("q")], [("User", "q")]),
        ([user(" q \n"), assistant("\ta ")], [("User", "q"), ("Agent", "a")]),
        ([user("a"), user("b")], [("User", "a\n\nb")]),
        ([user("q"), assistant("a1"), assistant("a2")], [("User", "q"), ("Agent", "a1\n\na2")]),
        ([user("q"), system("mid-conversation system"), assistant("a")], [("User", "q"), ("Agent", "a")]),
        ([user("q"), tool("r")], [("User", "q\n\n[Tool result]\nr")]),
        ([user("q"), tool("r", "search")], [("User", "q\n\n[Tool result from search]\nr")]),
        (
            [user("q"), assistant(""), tool("r", "search"), assistant("final")],
            [("User", "q\n\n[Tool result from search]\nr"), ("Agent", "final")],
        ),
        (
            [user("q"), assistant('search({"q": "x"})'), tool("r", "search"), assistant("final")],
            [
                ("User", "q"),
                ("Agent", 'search({"q": "x"})'),
                ("User", "[Tool result from search]\nr"),
                ("Agent", "final"),
            ],
        ),
        ([user("q"), tool("  ", "search"), assistant("a")], [("User", "q"), ("Agent", "a")]),
        ([assistant("hello")], [("User", ""), ("Agent", "hello")]),
        ([system("sys"), assistant("hello"), user("hi")], [("User", ""), ("Agent", "hello"), ("User", "hi")]),
        ([tool("r", "fetch")], [("User", "[Tool result from fetch]\nr")]),
        ([user("   "), assistant("a")], [("User", ""), ("Agent", "a")]),
        ([], []),
        ([system("only a system prompt")], []),
        ([user(""), assistant("\n")], []),
    ],
)
def test_conversation_turns(messages, turns):
    assert conversation_turns(messages) == turns


def test_conversation_turns_alternate_starting_with_user():
    messages = [assistant("a"), assistant("b"), tool("t"), user("u"), assistant("c"), tool("t2"), tool("t3")]
    sides = [side for side, _ in conversation_turns(messages)]
    assert sides[0] == "User"
    assert all(a != b for a, b in zip(sides, sides[1:], strict=False))


def test_empty_user_turn_renders_as_the_templates_would(template_render):
    # A lone response is judged after an empty user turn; the official template writes that turn as "User: ".
    expected = template_render(
        LG3_8B_TEMPLATE, [{"role": "user", "content": ""}, {"role": "assistant", "content": "hello"}]
    )
    prompt = render([assistant("hello")], variant="lg3-8b")
    assert prompt == expected
    assert "<BEGIN CONVERSATION>\n\nUser: \n\nAgent: hello\n\n<END CONVERSATION>" in prompt


# --- Categories and errors ----------------------------------------------------------------------------------------------


def test_category_names_and_defaults():
    assert list(CATEGORY_NAMES) == [f"S{i}" for i in range(1, 15)]
    assert CATEGORY_NAMES["S1"] == "Violent Crimes" and CATEGORY_NAMES["S14"] == "Code Interpreter Abuse"
    assert list(default_categories("lg3-1b")) == [f"S{i}" for i in range(1, 14)]
    assert list(default_categories("lg3-8b")) == list(default_categories("lg4")) == [f"S{i}" for i in range(1, 15)]
    assert default_categories("lg4")["S10"] == "Hate."
    assert all(text == CATEGORY_NAMES[code] + "." for code, text in default_categories("lg4").items())
    mine = default_categories("lg3-1b")
    mine["S1"] = "changed"
    assert default_categories("lg3-1b")["S1"] == "Violent Crimes."


def test_rendered_categories_is_what_render_lists():
    assert rendered_categories("lg3-8b", excluded=["S14"]) == default_categories("lg3-1b")
    assert rendered_categories("lg4", CUSTOM, ["S15"]) == {"S1": CUSTOM["S1"]}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"variant": "lg2"}, ValueError, "unknown Llama Guard variant 'lg2'"),
        ({"variant": "lg3-1b", "excluded": ["S14"]}, ValueError, r"excluded codes \['S14'\]"),
        ({"variant": "lg4", "excluded": ["s1"]}, ValueError, "not among the categories"),
        ({"variant": "lg4", "excluded": list(CATEGORY_NAMES)}, ValueError, "every category is excluded"),
        ({"variant": "lg4", "categories": {}}, ValueError, "categories is empty"),
        ({"variant": "lg4", "categories": {"S1": "  "}}, ValueError, "needs a text"),
        ({"variant": "lg4", "categories": {"S 1": "x."}}, ValueError, "without spaces"),
        ({"variant": "lg4", "excluded": "S1"}, TypeError, "not a string"),
    ],
)
def test_render_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        render([user("q")], **kwargs)


@pytest.mark.parametrize("conversation", [[], [system("only system")], [user("  "), assistant("")]])
def test_render_rejects_a_conversation_with_nothing_to_judge(conversation):
    with pytest.raises(ValueError, match="nothing|no user"):
        render(conversation, variant="lg3-1b")


@pytest.mark.parametrize("variant", VARIANTS)
def test_scoring_pieces(variant):
    assert score_suffix(variant) == "\n\n"
    assert label_tokens(variant) == ("safe", "unsafe")


@pytest.mark.parametrize("function", [score_suffix, label_tokens, default_categories])
def test_scoring_pieces_reject_unknown_variants(function):
    with pytest.raises(ValueError, match="expected one of lg3-1b, lg3-8b, lg4"):
        function("llama-guard-3")


# --- parse_answer -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "excluded", "expected"),
    [
        ("safe", (), (False, [])),
        ("\n\nsafe", (), (False, [])),
        ("\n\nsafe<|eot_id|>", (), (False, [])),
        ("safe<|eot|>", (), (False, [])),
        ("  Safe \n", (), (False, [])),
        ("safe\nS1", (), (False, [])),
        ("unsafe\nS1", (), (True, ["S1"])),
        ("unsafe\nS1,S10", (), (True, ["S1", "S10"])),
        ("\n\nunsafe\nS1,S10<|eot_id|>", (), (True, ["S1", "S10"])),
        ("\n\nunsafe\nS14<|eot|>", (), (True, ["S14"])),
        ("unsafe\nS2<|end_of_text|>", (), (True, ["S2"])),
        (" unsafe \n s2 , S11 ", (), (True, ["S2", "S11"])),
        ("Unsafe\nS3", (), (True, ["S3"])),
        ("UNSAFE\nS3", (), (True, ["S3"])),
        ("unsafe S1", (), (True, ["S1"])),
        ("unsafe, S1", (), (True, ["S1"])),
        ("unsafe\n\nS5", (), (True, ["S5"])),
        ("unsafe\nS1,S1,S10", (), (True, ["S1", "S10"])),
        ("unsafe\nS1\nThe response describes S9 weapons too.", (), (True, ["S1"])),
        ("unsafe", (), (True, [])),
        ("unsafe<|eot_id|>", (), (True, [])),
        ("unsafe\nS1,S10", ["S10"], (True, ["S1"])),
        ("unsafe\nS6", ["S6"], (False, [])),
        ("unsafe\nS6", ["s6"], (False, [])),
        ("unsafe\nS6,S13", ["S6", "S13"], (False, [])),
        ("unsafe\nS6,S13", ["S13"], (True, ["S6"])),
        ("unsafe", ["S1"], (True, [])),
        ("safe", ["S1"], (False, [])),
        ("", (), (False, [])),
        ("<|eot_id|>", (), (False, [])),
        ("I cannot help with that.", (), (False, [])),
        ("unsafety\nS1", (), (False, [])),
        ("The answer is unsafe\nS1", (), (False, [])),
        ("123 unsafe", (), (False, [])),
    ],
)
def test_parse_answer(text, excluded, expected):
    assert parse_answer(text, excluded=excluded) == expected


def test_parse_answer_rejects_a_string_for_excluded():
    with pytest.raises(TypeError, match="not a string"):
        parse_answer("unsafe\nS1", excluded="S1")


# --- The module stays light -----------------------------------------------------------------------------------------


def test_module_imports_nothing_heavy():
    tree = ast.parse(Path(lgp.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "re", "collections", "dataclasses", "guardrails"}


def test_public_names():
    assert set(lgp.__all__) == {
        "VARIANTS",
        "CATEGORY_NAMES",
        "default_categories",
        "rendered_categories",
        "render",
        "score_suffix",
        "label_tokens",
        "parse_answer",
        "conversation_turns",
    }
    assert VARIANTS == ("lg3-1b", "lg3-8b", "lg4")
