import httpx
import pytest

from gateway.api.app import Api, hash_key
from gateway.config import Tenant, default_text, loads
from gateway.core.scheduler import Scheduler
from gateway.runtime.ingest import CheckPool
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
def gateway(clock, request):
    """``parametrize("gateway", ["pool"], indirect=True)``: large streamed jobs are checked in
    a worker process (``CheckPool``), as ``sluice serve`` does; else in the loop."""
    cfg = loads(default_text())
    pool = CheckPool(cfg.core, 1) if getattr(request, "param", "loop") == "pool" else None
    return Gateway(Scheduler(cfg.core, clock()), MemoryStore(), pool=pool)


def api_for(gateway: Gateway, clock) -> Api:
    tenants = {hash_key(k): Tenant(name=n, key_sha256=hash_key(k), requests_per_second=50, burst=20)
               for n, k in KEYS.items()}  # fmt: skip
    return Api(gateway, tenants, clock=clock, max_body=1 << 20)


@pytest.fixture
def api(gateway, clock):
    return api_for(gateway, clock)


@pytest.fixture
def make_api(clock):
    """Another API (same tenants and clock) over another gateway."""
    return lambda gateway: api_for(gateway, clock)


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
