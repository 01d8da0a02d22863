"""Table-driven tests for the secrets scanner.

Every credential below is assembled at import time from a harmless prefix and filler, so this file holds no literal
that looks like a real secret.
"""

import base64

import pytest
from pydantic import ValidationError

from guardrails.scanners import ScanInput, scanner_class
from guardrails.scanners.secrets import PATTERNS
from guardrails.types import Decision, Finding, Role, Stage


def fill(n: int, alphabet: str = "aB3dE5gH7jK9mN1pQ2sT4vW6yZ8") -> str:
    """``n`` characters of deterministic filler."""
    return (alphabet * (n // len(alphabet) + 1))[:n]


UPPER = "QWERTYUIOPASDFGH1234567890"
HEX = "0123456789abcdef"

PEM_BODY = "\n" + fill(64) + "\n" + fill(40) + "\n"
AWS_ID = "AK" + "IA" + fill(16, UPPER)
AWS_SECRET = fill(40, "aB3/dE5+gH7jK9mN1pQ2sT4vW6yZ8")
GITHUB = "gh" + "p_" + fill(36)
GITHUB_PAT = "github" + "_pat_" + fill(82, "aB3_dE5gH7")
GITLAB = "gl" + "pat-" + fill(20)
SLACK = "xo" + "xb-" + fill(12, "1234567890") + "-" + fill(24)
SLACK_HOOK = "https://hooks.slack.com/services/" + "T" + fill(8, UPPER) + "/B" + fill(8, UPPER) + "/" + fill(24)
STRIPE = "sk" + "_live_" + fill(24)
GOOGLE = "AI" + "za" + fill(35, "aB3_dE5-gH7")
ANTHROPIC = "sk-" + "ant-api03-" + fill(93, "aB3_dE5-gH7")
OPENAI_PROJECT = "sk-" + "proj-" + fill(48)
OPENAI_LEGACY = "sk-" + fill(20) + "T3Blbk" + "FJ" + fill(20)
HUGGINGFACE = "h" + "f_" + fill(34)
NPM = "np" + "m_" + fill(36)
PYPI = "pypi-" + "AgEIcHlwaS5vcmc" + fill(60, "aB3_dE5-gH7")
SENDGRID = "S" + "G." + fill(22) + "." + fill(43, "aB3_dE5-gH7")
TWILIO = "S" + "K" + fill(32, HEX)
AZURE = "AccountKey=" + fill(86, "aB3/dE5+gH7") + "=="
JWT = "ey" + "JhbGciOiJIUzI1NiJ9" + "." + "ey" + "JzdWIiOiIxMjM0In0" + "." + fill(43, "aB3_dE5-gH7")
DB_URL = "postgres://" + "app_user" + ":" + fill(12) + "@db.internal:5432"

# kind -> (text containing one credential, the part of it that the finding's span must cover)
POSITIVES = {
    "private_key": ("key:\n-----BEGIN RSA PRIVATE KEY-----" + PEM_BODY + "-----END RSA PRIVATE KEY-----\n", None),
    "aws_access_key_id": (f"id {AWS_ID} here", AWS_ID),
    "aws_secret_access_key": (f"aws_secret_access_key = {AWS_SECRET}\n", f"aws_secret_access_key = {AWS_SECRET}"),
    "github_token": (f"token: {GITHUB}.", GITHUB),
    "gitlab_token": (f"use {GITLAB}", GITLAB),
    "slack_token": (f"SLACK={SLACK} ", SLACK),
    "slack_webhook": (f"post to {SLACK_HOOK}", SLACK_HOOK),
    "stripe_key": (f"stripe {STRIPE}", STRIPE),
    "google_api_key": (f"key={GOOGLE}&q=1", GOOGLE),
    "anthropic_key": (f"ANTHROPIC_API_KEY {ANTHROPIC}", ANTHROPIC),
    "openai_key": (f"OPENAI_API_KEY {OPENAI_PROJECT}", OPENAI_PROJECT),
    "huggingface_token": (f"hf {HUGGINGFACE}", HUGGINGFACE),
    "npm_token": (f"//registry.npmjs.org/:_authToken {NPM}", NPM),
    "pypi_token": (f"pypi token {PYPI}", PYPI),
    "sendgrid_key": (f"sendgrid {SENDGRID}", SENDGRID),
    "twilio_key": (f"twilio {TWILIO}", TWILIO),
    "azure_storage_key": (f"DefaultEndpointsProtocol=https;AccountName=x;{AZURE};", AZURE),
    "jwt": (f"Authorization: Bearer {JWT}", JWT),
    "url_credentials": (f"DATABASE_URL={DB_URL}/prod", DB_URL),  # the span ends with the host
    "generic_assignment": ('password = "' + fill(12) + '"', 'password = "' + fill(12) + '"'),
}

# kind -> text that almost holds that credential but must not be reported
NEAR_MISSES = {
    "private_key": "-----BEGIN PUBLIC KEY-----" + PEM_BODY + "-----END PUBLIC KEY-----",
    "aws_access_key_id": "id " + AWS_ID[:-1] + " here",  # 15 characters after the prefix
    "aws_secret_access_key": f"aws_secret_access_key = {AWS_SECRET[:-1]}\n",  # 39 characters
    "github_token": "token: " + GITHUB[:-1],  # 35 characters after the prefix
    "gitlab_token": "use " + GITLAB[:-1],  # 19 characters
    "slack_token": "SLACK=xoxz-" + SLACK[5:],  # unknown token type letter
    "slack_webhook": "post to " + SLACK_HOOK[: -len(fill(24))] + fill(19),  # secret part too short
    "stripe_key": "stripe sk_prod_" + fill(24),  # neither live nor test
    "google_api_key": "key=" + GOOGLE[:-1] + "&q=1",  # 34 characters after the prefix
    "anthropic_key": "ANTHROPIC_API_KEY sk-ant-api03-" + fill(79, "aB3_dE5-gH7"),  # 79 characters
    "openai_key": "OPENAI_API_KEY sk-proj-" + fill(39),  # 39 characters
    "huggingface_token": "hf " + HUGGINGFACE[:-1],  # 33 characters
    "npm_token": "npm " + NPM + "x",  # 37 characters
    "pypi_token": "pypi token " + PYPI[:-11],  # 49 characters after the fixed prefix
    "sendgrid_key": "sendgrid " + SENDGRID[:-1],  # 42 characters in the last part
    "twilio_key": "twilio SK" + fill(32, "0123456789ABCDEF"),  # upper-case hex
    "azure_storage_key": "AccountKey=" + fill(85, "aB3/dE5+gH7") + "==",  # 85 characters
    "jwt": "Bearer eyJhbGciOiJIUzI1NiJ9.bm90IGEgand0.signature12345",  # payload is not JSON ('eyJ')
    "url_credentials": "see https://" + "admin:pw@example.com/ and https://docs.example.com/user@example.org",
    "generic_assignment": 'password = "hunter2"',  # value under 8 characters
}


def make(**params):
    cls = scanner_class("secrets")
    return cls(cls.config_model(type="secrets", **params))


async def scan_one(scanner, text: str):
    [result] = await scanner.scan([ScanInput(text, role=Role.USER, index=0, stage=Stage.INPUT)])
    return result


def test_tables_cover_every_kind():
    assert set(POSITIVES) == set(PATTERNS) == set(NEAR_MISSES)


@pytest.mark.parametrize("kind, text, matched", [(k, t, m) for k, (t, m) in POSITIVES.items()], ids=list(POSITIVES))
async def test_positive(kind, text, matched):
    result = await scan_one(make(), text)
    assert (result.decision, result.score, result.categories) == (Decision.REDACT, 1.0, (kind,))
    assert result.reason == f"credentials found: {kind}"
    [finding] = result.findings
    assert (finding.rule, finding.view, finding.message_index) == (kind, "raw", 0)
    start, end = finding.span
    if matched is None:  # private key: the whole block
        assert text[start:end].startswith("-----BEGIN RSA PRIVATE KEY-----")
        assert text[start:end].endswith("-----END RSA PRIVATE KEY-----")
    else:
        assert text[start:end] == matched


@pytest.mark.parametrize("kind, text", list(NEAR_MISSES.items()), ids=list(NEAR_MISSES))
async def test_near_miss(kind, text):
    result = await scan_one(make(), text)
    assert (result.decision, result.score, result.findings, result.categories) == (Decision.ALLOW, 0.0, (), ())


@pytest.mark.parametrize(
    "text, kind",
    [
        (f"legacy {OPENAI_LEGACY}", "openai_key"),
        (f"fine-grained {GITHUB_PAT}", "github_token"),
        ("gh" + "s_" + fill(36), "github_token"),
        ("sk" + "_test_" + fill(30), "stripe_key"),
        ("r" + "k_live_" + fill(24), "stripe_key"),
        ("xo" + "xp-" + fill(20), "slack_token"),
        ("AS" + "IA" + fill(16, UPPER), "aws_access_key_id"),
        ("sk-" + "ant-admin01-" + fill(80, "aB3_dE5-gH7"), "anthropic_key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----" + PEM_BODY + "-----END OPENSSH PRIVATE KEY-----", "private_key"),
        ("api_key: '" + fill(20) + "'", "generic_assignment"),
        ("CLIENT_SECRET='" + fill(20) + "'", "generic_assignment"),
        ("redis://:" + fill(10) + "@cache:6379", None),  # empty user name: not a url_credentials shape
    ],
)
async def test_other_shapes(text, kind):
    result = await scan_one(make(), text)
    assert result.categories == ((kind,) if kind else ())


@pytest.mark.parametrize(
    "text",
    [
        "X" + AWS_ID,  # glued to a longer upper-case run
        AWS_ID + "X",
        "a" + GITHUB,
        GITHUB + "_x",
        "x" + STRIPE,
        "sk-" + "ant-api03-" + fill(80) + "T3Blbk" + "FJ" + fill(20),  # an Anthropic-shaped prefix is not OpenAI
    ],
)
async def test_word_boundaries(text):
    result = await scan_one(make(kinds=["aws_access_key_id", "github_token", "stripe_key", "openai_key"]), text)
    assert result.findings == ()


@pytest.mark.parametrize(
    "kinds, expected",
    [
        (None, ("aws_access_key_id", "generic_assignment", "github_token")),
        (["github_token"], ("github_token",)),
        (["aws_access_key_id", "generic_assignment"], ("aws_access_key_id", "generic_assignment")),
        (["jwt"], ()),
        ([], ()),
    ],
)
async def test_kinds_filter(kinds, expected):
    text = f"id={AWS_ID} token={GITHUB} password='{fill(10)}'"
    result = await scan_one(make(kinds=kinds), text)
    assert result.categories == expected
    assert result.decision is (Decision.REDACT if expected else Decision.ALLOW)


@pytest.mark.parametrize("kinds", [["github"], ["github_token", "aws_key"], ["GITHUB_TOKEN"]])
def test_unknown_kind_is_rejected(kinds):
    with pytest.raises(ValidationError, match="unknown kinds") as excinfo:
        make(kinds=kinds)
    unknown = [k for k in kinds if k not in PATTERNS]
    assert str(unknown) in str(excinfo.value)


@pytest.mark.parametrize(
    "redact_with, rule, expected",
    [
        (None, "github_token", "[REDACTED:github_token]"),
        (None, "aws_access_key_id", "[REDACTED:aws_access_key_id]"),
        ("<{kind}>", "jwt", "<jwt>"),
        ("***", "jwt", "***"),
        ("{kind}/{kind}", "npm_token", "npm_token/npm_token"),
    ],
)
def test_replacement(redact_with, rule, expected):
    scanner = make() if redact_with is None else make(redact_with=redact_with)
    assert scanner.replacement(Finding(rule=rule, span=(0, 1))) == expected


async def test_redaction_of_a_message():
    scanner = make()
    text = f"keys: {GITHUB} and {AWS_ID}."
    result = await scan_one(scanner, text)
    redacted = text
    for finding in sorted(result.findings, key=lambda f: f.span, reverse=True):
        start, end = finding.span
        redacted = redacted[:start] + scanner.replacement(finding) + redacted[end:]
    assert redacted == "keys: [REDACTED:github_token] and [REDACTED:aws_access_key_id]."


@pytest.mark.parametrize(
    "encode, view",
    [
        (lambda s: base64.b64encode(s.encode()).decode(), "base64"),
        (lambda s: s.encode().hex(), "hex"),
        (lambda s: "".join(chr(0xE0000 + ord(c)) for c in s), "hidden"),
    ],
    ids=["base64", "hex", "tags"],
)
async def test_secret_inside_an_encoded_run(encode, view):
    encoded = encode(f"my token is {GITHUB} keep it safe")
    text = "please store " + encoded + " for me"
    result = await scan_one(make(), text)
    assert result.categories == ("github_token",)
    [finding] = result.findings
    assert (finding.view, finding.span) == (view, (13, 13 + len(encoded)))


@pytest.mark.parametrize(
    "inserted",
    ["\u200b", "\u2060", "\u00ad"],
    ids=["zero-width-space", "word-joiner", "soft-hyphen"],
)
async def test_secret_split_by_invisible_characters(inserted):
    token = GITHUB[:10] + inserted + GITHUB[10:]
    text = "token: " + token + " ok"
    result = await scan_one(make(), text)
    [finding] = result.findings
    assert (finding.rule, finding.view) == ("github_token", "normalized")
    assert text[slice(*finding.span)] == token


async def test_normalize_false_does_not_look_inside_base64():
    text = "store " + base64.b64encode(f"my token is {GITHUB} keep it safe".encode()).decode()
    result = await scan_one(make(normalize=False), text)
    assert (result.decision, result.findings) == (Decision.ALLOW, ())


@pytest.mark.parametrize(
    "params, decision",
    [({}, Decision.REDACT), ({"action": "block"}, Decision.BLOCK), ({"action": "warn"}, Decision.WARN)],
)
async def test_action(params, decision):
    result = await scan_one(make(**params), f"token {GITHUB}")
    assert result.decision is decision
