"""Security at the API's seam: callback_url refused at submission (SSRF), the operator role."""

from __future__ import annotations

import json

import httpx
import msgspec
import pytest

from gateway.api.app import Api, Response, hash_key
from gateway.config import Operator, Tenant, default_text, loads
from gateway.core.targets import TargetPolicy
from gateway.errors import ConfigError

KEYS = {"acme": "acme-secret-key-1", "beta": "beta-secret-key-2"}  # as conftest.py
#: A few of tests/core/test_targets.py's corpus, through the API.
PRIVATE_CALLBACKS = ["http://127.1/", "http://0x7f000001:8080/", "http://2130706433/", "http://[::1]/",
                     "http://[::ffff:127.0.0.1]/", "http://localhost./", "http://0.0.0.0/",
                     "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://100.64.0.1/",
                     "http://224.0.0.1/", "http:///hooks", "http://user:pw@example.com/",
                     "http://example.com\\@127.0.0.1/", "http://example.com/\u0000x", "http://exa mple.com/",
                     "http://[fe80::1%25eth0]/", "http://intranet/"]  # fmt: skip

pytestmark = pytest.mark.anyio

MSG = {"to": "+14155550123", "body": "Your code is 123456", "from": "ACME", "category": "otp"}
JOB = {"from": "ACME", "template": "Hi", "category": "marketing", "recipients": [{"to": "+14155550123"}]}
OPS_KEY = "operator-secret-key-3"


@pytest.mark.parametrize("url", PRIVATE_CALLBACKS)
async def test_a_private_callback_url_is_refused_with_422_naming_the_field(client, url) -> None:
    for path, body, headers in (
        ("/v1/messages", {**MSG, "callback_url": url}, {}),
        ("/v1/jobs", {**JOB, "callback_url": url}, {}),
    ):
        r = await client.post(path, content=json.dumps(body), headers=headers)
        if r.status_code == 422 and r.json().get("field") != "callback_url":  # refused by the schema
            assert "callback_url" in r.json()["field"]
            continue
        assert r.status_code == 422, (url, r.text)
        assert r.json()["field"] == "callback_url" and "refused" in r.json()["error"]
    head = json.dumps({k: v for k, v in JOB.items() if k != "recipients"} | {"callback_url": url})
    r = await client.post("/v1/jobs", content=head + '\n{"to": "+14155550123"}\n',
                          headers={"content-type": "application/x-ndjson"})  # fmt: skip
    assert r.status_code == 422 and "callback_url" in (r.json()["field"] or ""), r.text


async def test_a_public_callback_url_is_accepted(client) -> None:
    r = await client.post("/v1/jobs", json={**JOB, "callback_url": "https://hooks.example.com/x?t=1"})
    assert r.status_code == 202, r.text


async def test_the_allow_list_at_submission(gateway, clock) -> None:
    tenants = {hash_key(KEYS["acme"]): Tenant(name="acme", key_sha256=hash_key(KEYS["acme"]))}
    api = Api(gateway, tenants, clock=clock, targets=TargetPolicy(["127.0.0.0/8"], own=[("127.0.0.1", 8080)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://sluice.test",
                                 headers={"authorization": f"Bearer {KEYS['acme']}"}) as c:  # fmt: skip
        assert (await c.post("/v1/messages", json={**MSG, "callback_url": "http://127.0.0.1:9000/h"})).status_code == 202
        r = await c.post("/v1/messages", json={**MSG, "callback_url": "http://127.0.0.1:8080/v1/messages"})
        assert r.status_code == 422 and "own endpoints" in r.json()["error"]  # the API itself: never
        r = await c.post("/v1/messages", json={**MSG, "callback_url": "http://10.0.0.1/"})
        assert r.status_code == 422


# -- operators ------------------------------------------------------------------------------


def operator_api(gateway, clock) -> Api:
    tenants = {hash_key(k): Tenant(name=n, key_sha256=hash_key(k)) for n, k in KEYS.items()}
    operators = {hash_key(OPS_KEY): Operator(name="ops", key_sha256=hash_key(OPS_KEY))}

    def carriers():
        async def handler(operator: bool = True) -> Response:
            view = {"alpha": {"health": "up", "ready": 7, "bucket": {"rate": 10}, "link": {"submitted": 3}}}
            return Response(200, msgspec.json.encode(view if operator else {"alpha": {"health": "up"}}))

        return handler

    async def metrics(operator: bool = True) -> Response:
        assert operator
        return Response(200, b"sluice_queue_depth 7\n")

    async def health() -> Response:
        return Response(200, b'{"status":"ok"}')

    extra = {"/metrics": metrics, "/v1/carriers": carriers(), "/healthz": health, "/readyz": health}
    return Api(gateway, tenants, clock=clock, extra=extra, operators=operators)


async def test_operators_read_everything_tenants_a_reduced_view_anonymous_nothing(gateway, clock) -> None:
    app = operator_api(gateway, clock)

    def as_(key: str | None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s.test", headers=headers)

    async with as_(None) as anon, as_(KEYS["acme"]) as acme, as_(OPS_KEY) as ops:
        assert (await anon.get("/metrics")).status_code == 401
        assert (await anon.get("/v1/carriers")).status_code == 401
        assert (await anon.get("/healthz")).status_code == 200 and (await anon.get("/readyz")).status_code == 200
        r = await acme.get("/metrics")
        assert r.status_code == 403 and "operator" in r.json()["error"]
        assert (await acme.get("/v1/carriers")).json() == {"alpha": {"health": "up"}}  # no volumes
        assert (await ops.get("/metrics")).text.startswith("sluice_queue_depth")
        assert (await ops.get("/v1/carriers")).json()["alpha"]["link"] == {"submitted": 3}
        assert (await ops.post("/v1/messages", json=MSG)).status_code == 401  # an operator is not a tenant


def test_operator_config() -> None:
    base = default_text()
    cfg = loads(base + '\n[[api.operators]]\nname = "ops"\nkey_env = "OPS_KEY"\n')
    assert cfg.api.operators == [Operator(name="ops", key_env="OPS_KEY")]
    with pytest.raises(ConfigError, match="exactly one"):
        loads(base + '\n[[api.operators]]\nname = "ops"\n')


def test_operator_keys_come_from_the_environment() -> None:
    from gateway.runtime.app import operator_table

    cfg = loads(default_text() + '\n[[api.operators]]\nname = "ops"\nkey_env = "OPS_KEY"\n')
    assert operator_table(cfg, {"OPS_KEY": OPS_KEY}) == {hash_key(OPS_KEY): cfg.api.operators[0]}
    with pytest.raises(ConfigError, match=r"api.operators\[0\].key_env"):
        operator_table(cfg, {})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/in", "http://169.254.169.254/", "http://user:pw@example.com/",
                                 "http://localhost/in", "http://127.0.0.1:8080/"])  # fmt: skip
def test_a_tenants_inbound_url_is_checked_when_the_config_is_loaded(url) -> None:
    text = default_text() + f'\n[[api.tenants]]\nname = "acme"\nkey_env = "K"\ninbound_url = "{url}"\n'
    with pytest.raises(ConfigError, match="inbound_url"):
        loads(text)
    if "@" not in url and "8080" not in url:  # opened by the allow-list (the API's own port never)
        opened = text.replace("[webhooks]", "[webhooks]\nallow_private = [\"127.0.0.0/8\", \"169.254.0.0/16\"]")
        if "[webhooks]" not in text:
            opened = text + '\n[webhooks]\nallow_private = ["127.0.0.0/8", "169.254.0.0/16"]\n'
        assert loads(opened).api.tenants[0].inbound_url == url


def test_allow_private_must_be_networks() -> None:
    with pytest.raises(ConfigError, match="allow_private"):
        loads(default_text() + '\n[webhooks]\nallow_private = ["localhost"]\n')


async def test_a_tenant_marked_operator_reads_the_operators_view(gateway, clock) -> None:
    app = operator_api(gateway, clock)
    app._tenants[hash_key(KEYS["beta"])] = Tenant(name="beta", key_sha256=hash_key(KEYS["beta"]), operator=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s.test",
                                 headers={"authorization": f"Bearer {KEYS['beta']}"}) as beta:  # fmt: skip
        assert (await beta.get("/metrics")).status_code == 200
        assert "link" in (await beta.get("/v1/carriers")).json()["alpha"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/batch", "/v1/jobs", "/v1/preview", "/v1/suppressions"])
async def test_json_nested_too_deeply_is_a_400_not_a_500(client, path) -> None:
    """``[[[[...]]]]`` 100,000 deep: msgspec raises RecursionError (``/v1/messages/batch``'s
    ``list[msgspec.Raw]`` walked it: a 500); every body route answers 4xx (400 ``malformed_json``
    where the decoder has to look inside, 422 where the outer type is already wrong)."""
    for body in (b"[" * 100_000 + b"]" * 100_000, b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]"):
        r = await client.post(path, content=body)
        assert r.status_code in (400, 422), (path, r.status_code, r.text[:200])
        if path == "/v1/messages/batch":
            assert r.json()["code"] == "malformed_json"
