"""Property-based requests generated from the OpenAPI schema (schemathesis): never a 5xx.

Both valid requests (positive) and requests that break the schema (negative) are sent to every
operation, in-process through ASGI. (schemathesis' pytest plugin does not run on pytest 9, so the
operations are driven with hypothesis directly.)
"""

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

import vitrine
from vitrine.config import ServeConfig
from vitrine.serve import create_app

KEY = "schema-key"


@pytest.fixture(scope="module")
def api_schema(built_store: Path, tmp_path_factory: pytest.TempPathFactory):
    store = Path(shutil.copytree(built_store, tmp_path_factory.mktemp("schema") / "store"))
    app = create_app(vitrine.open(store), ServeConfig(save_delay=0.5), api_key=KEY)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9  # every route is in the schema
    seen: list[tuple[str, str, int]] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=10, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def check(case) -> None:
            # With the key, so that writes are exercised past the key check too.
            response = case.call(headers={**(case.headers or {}), "X-API-Key": KEY})
            seen.append((case.method, case.path, response.status_code))
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 400 and case.path != "/readyz":
                assert "error" in response.json(), response.text[:300]

        try:
            check()
        except Unsatisfiable:  # nothing to break in an operation without parameters or body (e.g. /healthz)
            assert mode is GenerationMode.NEGATIVE and not operation.path_parameters and not operation.query \
                and not operation.body
    assert len(seen) >= len(operations)
