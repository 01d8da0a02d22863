"""Property-based run over the app's own OpenAPI schema (schemathesis): valid and invalid requests, never a 5xx."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies
from schemathesis import GenerationMode
from sidecar import ADMIN_KEY

EXAMPLES = 25  # per operation and mode: bounded, so the whole directory stays well under a minute


@pytest.fixture(scope="module")
def operations(proxy) -> list:
    schema = schemathesis.openapi.from_url(proxy.url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_lists_every_operation(operations):
    names = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "GET /v1/models",
        "POST /v1/moderations",
        "POST /v1/guard/scan",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /audit",
        "GET /audit/{request_id}",
    } <= names


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_makes_a_server_error(proxy, operations, mode):
    # The admin key may call everything; streams are read to the end like any other body.
    failures = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        @given(case=operation.as_strategy(generation_mode=mode), data=strategies.data())
        def check(case, data):
            response = case.call(base_url=proxy.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
            if response.status_code >= 500 and response.status_code not in (502, 504):
                failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))

        try:
            check()
        except hypothesis.errors.Unsatisfiable:  # nothing to make invalid (an operation without parameters)
            assert mode is GenerationMode.NEGATIVE
    assert not failures, failures[:3]
