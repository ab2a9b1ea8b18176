"""Contract: the gateway's admin API takes only names that match the documented rule
(``NAME_RULE``): anything else, sent raw or encoded, is a 400 that quotes the rule, and the
admin client URL-encodes names so none can change the path it calls.
"""

from __future__ import annotations

import httpx
import pytest

from serving.gateway.client import AdminError, GatewayAdmin
from serving.gateway.routing import NAME_RULE

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway(spawn, tmp_path, helpers):
    return spawn(
        "gateway",
        "--state",
        str(tmp_path / "state.json"),
        env={"MLOPS_GATEWAY_ADMIN_TOKEN": helpers.admin_token},
    )


@pytest.mark.parametrize("path_name", ["%2E%2E", "a%00b", "a%0Ab", "x" * 5000, "-lead", "a%20b"])
def test_bad_names_sent_raw_are_400_quoting_the_rule(gateway, helpers, path_name):
    headers = {"Authorization": f"Bearer {helpers.admin_token}"}
    for kind, body in (
        ("backends", {"url": "http://127.0.0.1:9"}),
        ("routes", {"stable": "x"}),
        ("partners", {"kind": "openai"}),
        ("fallback-routes", {"order": ["x"]}),
    ):
        answer = httpx.put(
            f"{gateway.url}/admin/{kind}/{path_name}", json=body, headers=headers, timeout=10
        )
        assert answer.status_code == 400, (kind, answer.text)
        error = answer.json()["error"]
        assert error["param"] == "name" and NAME_RULE in error["message"]
    state = httpx.get(f"{gateway.url}/admin/state", headers=headers, timeout=10).json()
    assert state["backends"] == {} and state["routes"] == {}


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a\x00b", "a\nb", "a?b=c", "../admin/state"])
def test_the_client_encodes_names_so_the_server_judges_them(gateway, helpers, name):
    admin = GatewayAdmin(gateway.url, helpers.admin_token, retries=0)
    with pytest.raises(AdminError) as error:
        admin.put_backend(name, "http://127.0.0.1:9")
    assert error.value.status == 400 and "does not match" in str(error.value)
    admin.put_backend("engine-1.v2_a", "http://127.0.0.1:9")
    assert list(admin.state()["backends"]) == ["engine-1.v2_a"]
