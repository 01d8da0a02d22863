"""Guard an async generate function, many requests at once, with a chat history.

Run: python examples/async_generate.py
"""

import asyncio

from guardrails import Pipeline

SECRET = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


async def agenerate(messages: list[dict]) -> str:
    await asyncio.sleep(0.01)  # stands in for a network call to your model server
    last = messages[-1]["content"]
    return f"(echo) {last}" if "token" not in last else f"Your token is {SECRET}, keep it safe."


async def main() -> None:
    pipe = Pipeline.from_policy("default")
    conversations = [
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"Question {i}"}]
        for i in range(5)
    ]
    conversations.append([{"role": "user", "content": "What is my token?"}])
    results = await asyncio.gather(*(pipe.arun(c, generate=agenerate) for c in conversations))
    for result in results:
        print(f"{result.decision.value:>6}  {result.text}")
    await pipe.aclose()


asyncio.run(main())
