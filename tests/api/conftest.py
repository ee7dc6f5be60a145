import httpx
import pytest

from gateway.api.app import Api, hash_key
from gateway.config import Tenant, default_text, loads
from gateway.core.scheduler import Scheduler
from gateway.runtime.service import Gateway
from gateway.store.memory import MemoryStore
from gateway.testing.clock import FakeClock

KEYS = {"acme": "acme-secret-key-1", "beta": "beta-secret-key-2"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def gateway(clock):
    cfg = loads(default_text())
    return Gateway(Scheduler(cfg.core, clock()), MemoryStore())


@pytest.fixture
def api(gateway, clock):
    tenants = {hash_key(k): Tenant(name=n, key_sha256=hash_key(k), requests_per_second=50, burst=20)
               for n, k in KEYS.items()}  # fmt: skip
    return Api(gateway, tenants, clock=clock, max_body=1 << 20)


@pytest.fixture
async def client(api):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://sluice.test",
                                 headers={"authorization": f"Bearer {KEYS['acme']}"}) as c:  # fmt: skip
        yield c


@pytest.fixture
async def other(api):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://sluice.test",
                                 headers={"authorization": f"Bearer {KEYS['beta']}"}) as c:  # fmt: skip
        yield c
