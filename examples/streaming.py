"""Stream a response through the output scanners: text is released only after it was scanned.

Run: python examples/streaming.py
"""

from guardrails import Pipeline

KEY = "AKIA" + "Q3EGRV7ZXB2MN4PK"


def stream_generate(prompt: str):
    answer = (
        "To configure the AWS CLI, run `aws configure` and paste your access key id when asked. "
        f"For example, mine is {KEY}; never commit it. Then pick a default region such as eu-west-1, "
        "and check the setup with `aws sts get-caller-identity`. If that fails, look at ~/.aws/credentials and "
        "~/.aws/config: profiles live there, and AWS_PROFILE picks one. On a shared machine prefer short-lived "
        "credentials from `aws sso login` over long-lived keys, and rotate any key that was ever pasted into a chat."
    )
    for i in range(0, len(answer), 5):  # five characters at a time, like a token stream
        yield answer[i : i + 5]


pipe = Pipeline.from_policy("default")
stream = pipe.stream("How do I configure the AWS CLI?", generate=stream_generate)
for piece in stream:
    print(f"released: {piece!r}")
print("decision:", stream.result.decision.value)
