import re

import pytest

from gateway.config import loads
from gateway.errors import ConfigError

CARRIER = "[[core.carriers]]\nname = 'beta'\nrate = 10.0\nburst = 10\n[[core.routes]]\nprefix = ''\ncarriers = ['beta']\n"


def test_http_carriers_in_the_config() -> None:
    cfg = loads(CARRIER + "[[carriers.http]]\nname = 'beta'\nprofile = 'twilio'\naccount = 'AC1'\n"
                "[carriers.http.fields]\nto = 'msisdn'\n")  # fmt: skip
    (link,) = cfg.carriers.http
    assert (link.profile, link.account, link.fields.to, link.concurrency) == ("twilio", "AC1", "msisdn", 8)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[[carriers.http]]\nname = 'gamma'\n", "not one of core.carriers"),
        ("[[carriers.http]]\nname = 'beta'\nprofile = 'carrier-pigeon'\n", "carriers.http[0].profile"),
        ("[[carriers.http]]\nname = 'beta'\nconcurrency = 0\n", "carriers.http[0].concurrency"),
        ("[[carriers.http]]\nname = 'beta'\n[carriers.http.fields]\nnumber = 'to'\n", "carriers.http[0].fields"),
    ],
)
def test_http_config_errors_name_the_key(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(match)):
        loads(CARRIER + text)
