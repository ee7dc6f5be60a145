"""The SSRF rule's text checks (gateway/core/targets.py): a corpus of spellings of addresses the
gateway must never call, and properties over generated addresses. Nothing here opens a socket."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.targets import TargetPolicy, address_problem, parse_host, url_problem

STRICT = TargetPolicy()
OWN = TargetPolicy(own=[("127.0.0.1", 8080), ("smsc.example.net", 2775), ("0.0.0.0", 9000)])
LOOPBACK_OPEN = TargetPolicy(["127.0.0.0/8", "::1/128"], own=[("127.0.0.1", 8080)])

#: Every spelling of loopback, unspecified, link-local, private, CGNAT and multicast addresses a
#: resolver or a URL parser somewhere accepts.
REFUSED = [
    "http://127.0.0.1/", "http://127.1/", "http://127.0.1/", "http://0x7f000001/", "http://0x7f.0.0.1/",
    "http://2130706433/", "http://017700000001/", "http://0177.0.0.1/", "http://0177.0.0.01/",
    "http://127.0.0.1./", "http://127.000.000.001/", "http://127.255.255.254:8443/x", "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
    "http://[0000::1]:80/", "http://[::]/", "http://0.0.0.0/", "http://0/", "http://0x0/", "http://0.0.0.0:8080/",
    "http://localhost/", "http://LOCALHOST/", "http://localhost./", "http://localhost:8080/",
    "http://foo.localhost/", "http://printer.local/", "http://metadata.google.internal/",
    "http://metadata/", "http://intranet/", "http://169.254.169.254/latest/meta-data/",
    "http://0xa9fea9fe/", "http://2852039166/", "http://[::ffff:169.254.169.254]/", "http://[fe80::1]/",
    "http://[fd00:ec2::254]/", "http://10.0.0.1/", "http://10.1/", "http://172.16.0.1/", "http://172.31.255.255/",
    "http://192.168.1.1/", "http://192.168.257/", "http://100.64.0.1/", "http://100.127.255.254/",
    "http://224.0.0.1/", "http://239.255.255.250:1900/", "http://[ff02::1]/", "http://255.255.255.255/",
    "http://240.0.0.1/", "http://198.18.0.1/", "http://192.0.2.1/", "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/", "http://[2002:7f00:1::]/", "http://[2002:a9fe:a9fe::1]/",
    "http://[2001:db8::1]/", "http://[fc00::1]/", "http://[fe80::1%25eth0]/", "http://[2606:4700::1%25eth0]/",
    # not a URL the gateway will call at all
    "http:///hooks", "http://", "http://:8080/", "https://?x", "ftp://example.com/", "file:///etc/passwd",
    "gopher://example.com/", "http:/example.com/", "http:example.com",
    "http://user:pass@example.com/", "http://example.com@127.0.0.1/", "http://a@example.com/",
    "http://example.com\\@127.0.0.1/", "http://exam ple.com/", "http://example.com/\r\nX-Injected: 1",
    "http://example.com/\x00", "http://example.com\t/", "http://exa\u2024mple.com/", "http://１２７.0.0.1/",
    "http://example.com/café", "http://example.com:0/", "http://example.com:65536/", "http://example.com:8o/",
    "http://example.com:-1/", "http://999.1.1.1/", "http://1.2.3.4.5/", "http://256.256.256.256/",
    "http://08.0.0.1/", "http://-example.com/", "http://exa_mple..com/", "http://%31%32%37.0.0.1/",
    "http://[::1/", "http://[vulnerable]/",
]
ALLOWED = [
    "https://hooks.example.com/sluice", "https://hooks.example.com:8443/x?token=abc#frag",
    "http://93.184.216.34/hook", "https://[2606:4700:4700::1111]/", "http://1.1.1.1:8080/",
    "https://xn--bcher-kva.example/hooks", "https://api.example.co.uk./hooks", "https://a-b.example/",
    "HTTPS://Hooks.Example.COM/x", "http://[::ffff:93.184.216.34]/", "http://[64:ff9b::5db8:d822]/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused_at_submission(url: str) -> None:
    assert url_problem(url, STRICT) is not None


@pytest.mark.parametrize("url", ALLOWED)
def test_public_urls_pass(url: str) -> None:
    assert url_problem(url, STRICT) is None


def test_the_gateways_own_endpoints_are_refused_even_when_private_networks_are_open() -> None:
    for url in ("http://127.0.0.1:8080/", "http://127.1:8080/", "http://localhost:8080/",
                "http://[::1]:8080/", "http://smsc.example.net:2775/", "http://SMSC.example.net.:2775/",
                "http://10.0.0.7:9000/"):  # fmt: skip
        assert url_problem(url, OWN) is not None, url
        assert "own endpoints" in (url_problem(url, OWN) or "") or url_problem(url, TargetPolicy(own=OWN.own))
    assert url_problem("http://127.0.0.1:8080/", LOOPBACK_OPEN) is not None
    assert url_problem("http://127.0.0.1:8081/", LOOPBACK_OPEN) is None  # a test's receiver
    assert url_problem("http://localhost:8081/", LOOPBACK_OPEN) is None  # resolved and checked later
    assert url_problem("http://smsc.example.net:2776/", OWN) is None


def test_the_allow_list_opens_only_its_networks() -> None:
    policy = TargetPolicy(["10.20.0.0/16"])
    assert url_problem("http://10.20.3.4/", policy) is None
    assert url_problem("http://10.21.3.4/", policy) is not None
    assert url_problem("http://169.254.169.254/", policy) is not None
    assert url_problem("http://[::1]/", policy) is not None


@given(st.ip_addresses())
def test_an_address_is_refused_iff_it_is_not_public(ip) -> None:
    """Against Python's own classification: whatever it calls private, loopback, link-local,
    multicast, reserved or unspecified is refused (and we refuse a few more: CGNAT, 6to4 and
    NAT64 wrapping of those)."""
    embeds = ip.version == 6 and (ip.ipv4_mapped or ip.sixtofour or ip in ipaddress.ip_network("64:ff9b::/96"))
    special = not embeds and (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
               or ip.is_unspecified or (ip.version == 4 and ip in ipaddress.ip_network("100.64.0.0/10")))  # fmt: skip
    if special:
        assert address_problem(ip, 443, STRICT) is not None
    if ip.version == 6 and not (ip in ipaddress.ip_network("2000::/3") or embeds):
        assert address_problem(ip, 443, STRICT) is not None  # not global unicast
    if ip.version == 6 and ip.ipv4_mapped is not None:
        assert (address_problem(ip, 443, STRICT) is None) == (address_problem(ip.ipv4_mapped, 443, STRICT) is None)


@given(st.ip_addresses(v=4))
def test_every_spelling_of_an_ipv4_address_means_it(ip) -> None:
    n = int(ip)
    a, b, c, d = ip.packed
    for text in (str(n), hex(n), f"0{n:o}", f"{a}.{(b << 16) | (c << 8) | d}", f"{a}.{b}.{(c << 8) | d}",
                 f"{a:#x}.{b:#x}.{c:#x}.{d:#x}", f"0{a:o}.{b}.{c}.{d}", f"{ip}."):  # fmt: skip
        assert parse_host(text) == ip, text
        url = f"http://{text}:8000/"
        assert (url_problem(url, STRICT) is None) == (address_problem(ip, 8000, STRICT) is None), url


@given(st.ip_addresses(v=4).filter(lambda ip: not ip.is_global))
def test_no_spelling_of_a_private_ipv4_address_passes(ip) -> None:
    for url in (f"http://{int(ip)}/", f"http://[::ffff:{ip}]/", f"http://{hex(int(ip))}/"):
        assert url_problem(url, STRICT) is not None, url


@given(st.text(max_size=40))
def test_any_text_is_judged_without_an_exception(text: str) -> None:
    for url in (text, f"http://{text}/", f"https://example.com/{text}", f"http://{text}@example.com/"):
        problem = url_problem(url, STRICT)
        assert problem is None or isinstance(problem, str)
        if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in url):
            assert problem is not None
