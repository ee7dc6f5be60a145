"""The user docs, checked by running them: what a new user reading only README.md and the docs it
points to would type must work as written.

How examples are marked in the docs (a convention of this test; the first word of a fence's info
string is its language, so the marks do not change how a page renders):

- ```toml doc-test:local-config   README's "Try it on your machine" config: this test serves it.
- ```http doc-test                an HTTP request as editors' REST clients write it
  (``METHOD URL``, headers, a blank line, the body), then the answer the docs promise:
  ``HTTP/1.1 STATUS ...``, a blank line, the JSON. ``$SLUICE_KEY`` / ``$CAMPAIGNS_KEY`` are the
  keys; ``127.0.0.1:8080`` is the gateway and ``127.0.0.1:8090`` the campaign layer (replaced by
  the ports the server really took). The answer's JSON is matched as a subset: every key shown must
  be there with the value shown, ``"…"`` matches any value, a list shown is the whole list.
  Blocks run in the order of DOCS, then of the page, against one fresh server (so ids are 1, 2...).

Besides: every config key the docs name (``api.max_body_bytes``, ``campaigns.tenants[].key_env``,
the keys of every ```toml block) exists in the config tree, and the defaults the docs state are the
tree's; every ``sluice ...`` command and ``--flag`` the docs show exists.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.cli import main as sluice
from campaigns.config import CampaignSettings
from gateway import webhook_signature as signature
from gateway.config import Config
from campaigns.story.runner import free_port
from gateway.testing.processes import simulator, start

ROOT = Path(__file__).parent.parent
DOCS = ["README.md", "docs/API.md", "docs/CAMPAIGNS.md", "docs/CAMPAIGNS-SENDING.md", "docs/CAMPAIGNS-FLOWS.md",
        "docs/WEBHOOKS.md", "docs/COMPLIANCE.md", "docs/RELIABILITY.md"]  # fmt: skip
KEYS = {"SLUICE_KEY": "docs-gateway-key-0123456789abcdef", "CAMPAIGNS_KEY": "docs-campaigns-key-0123456789ab",
        "CAMPAIGNS_LINKS": "docs-links-secret-0123456789abcdef", "ALPHA_SMPP_PASSWORD": "sim",
        "WEBHOOK_SECRET": "docs-webhook-secret-0123456789abcdef"}  # fmt: skip
ANY = "…"


@dataclass
class Block:
    doc: str
    line: int  # of the opening fence, 1-based
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    out, lines = [], (ROOT / doc).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\S.*)?$", lines[i])
        if m is None:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j] != "```":
            j += 1
        out.append(Block(doc, i + 1, (m.group(1) or "").strip(), "\n".join(lines[i + 1 : j])))
        i = j + 1
    return out


def marked(mark: str) -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc) if mark in b.info.split()[1:]]


# -- the HTTP examples ------------------------------------------------------------------------------


@dataclass
class Example:
    block: Block
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    status: int
    answer: Any  # the JSON shown, or None


def parse_example(b: Block) -> Example:
    parts = re.split(r"^HTTP/1\.1 ", b.text, maxsplit=1, flags=re.M)
    assert len(parts) == 2, f"{b.where}: a doc-test block needs its answer (a line 'HTTP/1.1 STATUS')"
    request, response = parts[0].strip("\n"), "HTTP/1.1 " + parts[1]
    head, _, body = request.partition("\n\n")
    first, *header_lines = head.splitlines()
    method, url = first.split()[:2]
    headers = dict(line.split(": ", 1) for line in header_lines)
    status_head, _, answer = response.partition("\n\n")
    status = int(status_head.split()[1])
    return Example(b, method, url, headers, body.strip("\n").encode(), status,
                   json.loads(answer) if answer.strip() else None)  # fmt: skip


def mismatches(shown: Any, got: Any, path: str = "$") -> list[str]:
    """Where ``got`` differs from what the docs show (a subset of objects; ``"…"`` matches anything)."""
    if shown == ANY:
        return []
    if isinstance(shown, str) and ANY in shown and isinstance(got, str):  # "https://sl.ui/…": a pattern
        pattern = ".*?".join(re.escape(part) for part in shown.split(ANY))
        return [] if re.fullmatch(pattern, got, re.S) else [f"{path}: shown {shown!r}, got {got!r}"]
    if isinstance(shown, dict):
        if not isinstance(got, dict):
            return [f"{path}: shown an object, got {got!r}"]
        return [m for k, v in shown.items()
                for m in (mismatches(v, got[k], f"{path}.{k}") if k in got else [f"{path}.{k}: missing"])]  # fmt: skip
    if isinstance(shown, list):
        if not isinstance(got, list) or len(got) != len(shown):
            return [f"{path}: shown {shown!r}, got {got!r}"]
        return [m for i, (s, g) in enumerate(zip(shown, got, strict=True)) for m in mismatches(s, g, f"{path}[{i}]")]
    return [] if shown == got and type(shown) is type(got) else [f"{path}: shown {shown!r}, got {got!r}"]


def test_the_matcher_can_fail() -> None:
    assert mismatches({"a": ANY, "b": [1, 2]}, {"a": 5, "b": [1, 2], "c": 0}) == []
    assert mismatches({"a": 1}, {"a": 2}) and mismatches({"a": 1}, {}) and mismatches([1], [1, 2])
    assert mismatches({"a": 1}, {"a": True}) and mismatches({"a": {"b": 1}}, {"a": [1]})
    assert mismatches("x/…. Code …", "x/ab. Code C1") == [] and mismatches("x/…. Code", "y/ab. Code")


def test_the_docs_have_examples_of_both_apis() -> None:
    examples = [parse_example(b) for b in marked("doc-test")]
    assert {":8080/" in e.url for e in examples} == {True, False}, "both the gateway's and the campaigns' API"
    assert len(examples) >= 15
    assert len(marked("doc-test:local-config")) == 1


@pytest.fixture
def anyio_backend() -> tuple[str, dict]:
    return ("asyncio", {"use_uvloop": True})


@pytest.mark.anyio
async def test_every_documented_request_answers_as_documented(tmp_path: Path) -> None:
    """README's local config served as README says (a simulated carrier, `sluice serve --config`),
    then every doc-test request, in order; all differences are reported at once."""
    (config,) = marked("doc-test:local-config")
    examples = [parse_example(b) for b in marked("doc-test")]
    async with simulator() as sim:
        campaigns_port = free_port()  # in public_url too: the gateway posts the campaigns' states there
        text = config.text.replace("port = 2775", f"port = {sim.port}").replace("8090", str(campaigns_port))
        assert text.count(f"port = {sim.port}") == 1 and f"port = {campaigns_port}" in text, "the local config's ports moved"
        (tmp_path / "sluice.toml").write_text(text)
        cmd = [sys.executable, "-m", "campaigns.cli", "serve", "--config", "sluice.toml", "--port", "0"]
        with (tmp_path / "serve.log").open("wb") as log:
            try:
                async with start(cmd, name="sluice serve", env=KEYS, cwd=tmp_path, stderr=log) as gw:
                    ports = {"127.0.0.1:8080": f"127.0.0.1:{gw.port}",
                             "127.0.0.1:8090": f"127.0.0.1:{(await gw.line(30.0))['campaigns']}"}  # fmt: skip
                    assert (tmp_path / "sluice.db").exists() and (tmp_path / "campaigns.db").exists()
                    failures = await _run(examples, ports)
            except RuntimeError as exc:  # did not start: say why (a variable the config names, say)
                raise AssertionError(f"{exc}\n{(tmp_path / 'serve.log').read_text(errors='replace')[-2000:]}") from None
    assert not failures, "the docs and the product disagree:\n" + "\n".join(failures)


async def _run(examples: list[Example], ports: dict[str, str]) -> list[str]:
    failures = []
    async with httpx.AsyncClient(timeout=30.0) as client:
        for e in examples:
            url = e.url
            for doc_port, real in ports.items():
                url = url.replace(doc_port, real)
            headers = {k: re.sub(r"\$([A-Z_]+)", lambda m: KEYS[m.group(1)], v) for k, v in e.headers.items()}
            r = await client.request(e.method, url, headers=headers, content=e.body or None)
            if r.status_code != e.status:
                failures.append(f"{e.block.where}: {e.method} {e.url}: status {r.status_code}, shown {e.status}: {r.text}")
                continue
            if e.answer is not None:
                failures += [f"{e.block.where}: {e.method} {e.url}: {m}" for m in mismatches(e.answer, r.json())]
    return failures


# -- config keys and their defaults -----------------------------------------------------------------

def lookup(path: str) -> msgspec.inspect.Field | None:
    """The field a dotted key names (``api.tenants[].key_env``, ``campaigns.tenants[0].signup.sender``)."""
    parts = [p for p in re.sub(r"\[\d*\]", "", path).split(".") if p]
    if parts[0] == "campaigns":
        struct_type, parts = CampaignSettings, parts[1:]
    else:
        struct_type = Config
    fields = _fields(struct_type)
    field, keyed = None, False
    for name in parts:
        if keyed:  # a key of a table of tables (`core.quiet_hours.rules.FR`): any name
            keyed = False
            continue
        if fields is None or name not in fields:
            return None
        field = fields[name]
        fields, keyed = _sub(field), _is_table_of_tables(field)
    return field


def _is_table_of_tables(field: msgspec.inspect.Field) -> bool:
    info = field.type
    if isinstance(info, msgspec.inspect.UnionType):
        info = next((x for x in info.types if not isinstance(x, msgspec.inspect.NoneType)), info)
    return isinstance(info, msgspec.inspect.DictType) and isinstance(info.value_type, msgspec.inspect.StructType)


def _sub(field: msgspec.inspect.Field) -> dict[str, Any] | None:
    info = field.type
    while True:
        if isinstance(info, msgspec.inspect.StructType):
            return {f.encode_name: f for f in info.fields}
        if isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif isinstance(info, msgspec.inspect.UnionType):
            inner = [x for x in info.types if not isinstance(x, msgspec.inspect.NoneType)]
            if len(inner) != 1:
                structs = [x for x in inner if isinstance(x, (msgspec.inspect.StructType, msgspec.inspect.ListType))]
                if not structs:
                    return None
                inner = structs
            info = inner[0]
        else:
            return None


@functools.cache
def _fields(t: Any) -> dict[str, Any] | None:
    """The fields of a root struct type (Config, CampaignSettings) by their TOML names."""
    info = msgspec.inspect.type_info(t)
    return {f.encode_name: f for f in info.fields} if isinstance(info, msgspec.inspect.StructType) else None


KEY_IN_TEXT = re.compile(r"`\[*((?:core|api|store|carriers|webhooks|inbound|campaigns)(?:\.[A-Za-z0-9_]+(?:\[\d*\])?)+)\]*(?: = [^`]*)?`")


def _is_code(path: str) -> bool:
    """``core.links.classify_hit`` is campaigns/core/links.py's function, not a key."""
    parts = path.split(".")
    return (ROOT / "campaigns" / parts[0] / f"{parts[1]}.py").exists() if len(parts) > 1 else False


def test_every_config_key_the_docs_name_exists() -> None:
    named = {(doc, m.group(1)) for doc in DOCS for m in KEY_IN_TEXT.finditer((ROOT / doc).read_text(encoding="utf-8"))}
    keys = {(doc, k) for doc, k in named if not _is_code(k)}
    assert len(keys) >= 25, keys
    missing = sorted(f"{doc}: `{k}`" for doc, k in keys if lookup(k) is None)
    assert not missing, "named in the docs, not in the config tree:\n" + "\n".join(missing)


def _toml_paths(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in table.items():
        path = f"{prefix}.{k}" if prefix else k
        items = v if isinstance(v, list) and v and all(isinstance(x, dict) for x in v) else None
        if isinstance(v, dict):
            before = len(out)
            out += _toml_paths(v, path)
            if len(out) == before or lookup(path) is not None and _sub(lookup(path)) is None:
                out.append((path, v))  # a table that is a value (a dict of lists, e.g. overrides)
        elif items is not None:
            for item in items:
                out += _toml_paths(item, f"{path}[]")
        else:
            out.append((path, v))
    return out


def test_every_documented_toml_block_uses_keys_of_the_tree_with_the_stated_defaults() -> None:
    """Each ```toml block of the docs: its keys exist (fragments are fine); a value whose comment says
    `(default)` is the tree's default."""
    problems, checked_defaults = [], 0
    for doc in DOCS:
        for b in blocks(doc):
            if not b.info.startswith("toml"):
                continue
            table = tomllib.loads(b.text)
            for path, _ in _toml_paths(table):
                if lookup(path) is None and not any(lookup(".".join(path.split(".")[:n])) is not None
                                                    and _sub(lookup(".".join(path.split(".")[:n]))) is None
                                                    for n in range(1, path.count(".") + 1)):  # fmt: skip
                    problems.append(f"{b.where}: `{path}` is not a key of the config tree")
            for line in b.text.splitlines():
                m = re.match(r"^\s*([a-z_]+)\s*=\s*([^#]+?)\s*#.*\(default\)", line)
                if m is None:
                    continue
                section = _section_of(b.text, line)
                field = lookup(f"{section}.{m.group(1)}")
                checked_defaults += 1
                value = tomllib.loads(f"v = {m.group(2)}")["v"]
                if field is None or field.default != value:
                    problems.append(f"{b.where}: `{section}.{m.group(1)} = {value!r}` says (default); "
                                    f"the tree's default is {getattr(field, 'default', None)!r}")  # fmt: skip
    assert checked_defaults >= 3
    assert not problems, "\n".join(problems)


def _section_of(text: str, line: str) -> str:
    section = ""
    for ln in text.splitlines():
        if m := re.match(r"^\[\[?([^\]]+)\]\]?", ln):
            section = m.group(1) + ("[]" if ln.startswith("[[") else "")
        if ln == line:
            return section
    raise AssertionError(line)


# The defaults the docs state in prose: (doc, the words as written, key, the value they mean).
STATED = [
    ("docs/API.md", "`api.max_head_bytes`, 64 KiB by default", "api.max_head_bytes", 64 * 1024),
    ("docs/API.md", "`limit` is 1..1000 (default 100)", None, None),
    ("docs/WEBHOOKS.md", "`webhooks.batch_size` events per request (default 100)", "webhooks.batch_size", 100),
    ("docs/WEBHOOKS.md", "`webhooks.max_age` (default one day", "webhooks.max_age", 86_400.0),
    ("docs/COMPLIANCE.md", "`inbound.dedupe_window`, 900 s by default", "inbound.dedupe_window", 900.0),
    ("docs/CAMPAIGNS.md", "(10 by default;", "campaigns.tenants[].form.max_per_ip_per_hour", 10),
    ("docs/CAMPAIGNS.md", "abandon_after = 3600", "campaigns.abandon_after", 3600.0),
    ("docs/CAMPAIGNS.md", "`click_min_delay_s` (default 10 s", "campaigns.tenants[].click_min_delay_s", 10.0),
    ("docs/CAMPAIGNS.md", "`click_window_s` (default 5 days", "campaigns.tenants[].click_window_s", 5 * 86_400.0),
]


@pytest.mark.parametrize(("doc", "words", "key", "value"), STATED, ids=[s[2] or s[1] for s in STATED])
def test_a_default_stated_in_prose_is_the_trees(doc: str, words: str, key: str | None, value: Any) -> None:
    text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
    assert words in text, f"{doc} no longer says {words!r}: update this test with what it says now"
    if key is not None:
        field = lookup(key)
        assert field is not None, key
        assert field.default == value, f"{doc} says {words!r}; the tree's default is {field.default!r}"


# -- the command line -------------------------------------------------------------------------------

COMMAND = re.compile(r"(?:^|\n|`)\s*(?:\$ )?(?:\.venv/bin/)?sluice ((?:[a-z][a-z-]* ?)+)([^`\n#]*)")


def _commands() -> list[tuple[str, list[str], list[str]]]:
    """(doc, the subcommand path, the --flags) of every `sluice ...` the docs show (code spans, sh blocks)."""
    out = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        spans = re.findall(r"`(sluice [^`\n]+)`", text)
        for b in blocks(doc):
            if b.info.split()[:1] in (["sh"], ["console"]):
                spans += [ln.split("#")[0] for ln in b.text.splitlines() if re.match(r"^\s*(\$ )?(\.venv/bin/)?sluice ", ln)]
        for span in spans:
            # `flows list|create FILE [--new-version]|install ID`: each alternative after the same words
            first, *others = span.split("|")
            stem = first.rsplit(None, 1)[0]
            for alternative in [first, *(f"{stem} {o}" for o in others)]:
                words = alternative.replace("[", " ").replace("]", " ").split()
                words = words[words.index("sluice") + 1 :] if "sluice" in words else words[1:]
                path = []
                for w in words:
                    if w != "..." and (w.startswith("-") or not re.fullmatch(r"[a-z][a-z0-9-]*", w)):
                        break
                    path.append(w)
                flags = [w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][a-z-]*(=.*)?", w)]
                out.append((doc, path, flags))
    return out


def test_every_documented_command_and_flag_exists() -> None:
    found = _commands()
    assert len(found) >= 20
    problems = []
    for doc, path, flags in found:
        cmd: click.Command = sluice
        walked: list[str] = []
        for word in path:
            if not isinstance(cmd, click.Group) or (word not in cmd.commands and word != "..."):
                break  # an argument (`sluice bench report DIR`), not a subcommand
            if word == "...":  # `sluice bench ... --out DIR`: every subcommand has the flags
                for name, sub in cmd.commands.items():
                    problems += [f"{doc}: `sluice {' '.join([*walked, name])}` has no {f}" for f in flags if f not in _options(sub)]
                break
            cmd, walked = cmd.commands[word], [*walked, word]
        else:
            if isinstance(cmd, click.Group) and not walked:
                problems.append(f"{doc}: `sluice {' '.join(path)}` is not a command")
            problems += [f"{doc}: `sluice {' '.join(walked)}` has no {f}" for f in flags if f not in _options(cmd)]
            continue
        if "..." not in path:
            problems += [f"{doc}: `sluice {' '.join(walked)}` has no {f}" for f in flags if f not in _options(cmd)]
    assert not problems, "\n".join(problems)


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]} | {"--help"}


# -- the signature check docs/WEBHOOKS.md gives receivers to copy ------------------------------------


@functools.cache
def _documented_verify() -> Any:
    (b,) = marked("doc-test:verify")
    scope: dict[str, Any] = {}
    exec(compile(b.text, b.where, "exec"), scope)  # the docs' own code, as a receiver would paste it
    return scope["verify"]


HEADER_TEXT = st.text(st.sampled_from("tv1=,. 0123456789abcdef²٣éx\t"), max_size=60) | st.text(max_size=60)


@given(secret=st.binary(min_size=1, max_size=40), body=st.binary(max_size=200), skew=st.integers(-200, 200),
       junk=HEADER_TEXT)  # fmt: skip
def test_the_documented_signature_check_accepts_sluices_signatures_and_never_raises(
        secret: bytes, body: bytes, skew: int, junk: str) -> None:  # fmt: skip
    verify = _documented_verify()
    t = int(time.time()) + skew
    header = signature.sign(secret, body, t)
    assert verify(secret, header, body)
    assert verify(secret, f"{header},v1={'0' * 64}", body)  # rotation: any v1 may match
    assert not verify(secret, header, body + b"!") and not verify(secret + b"!", header, body)
    assert not verify(secret, signature.sign(secret, body, t - 3600), body)  # a replay an hour later
    for text in (junk, f"t={t},{junk}", f"t={t},v1={junk}", f"{junk},{header}"):
        verify(secret, text, body)  # a hostile header answers, never raises
        signature.verify(secret, text, body, time.time())  # nor does the gateway's own


def test_the_key_lookup_can_fail() -> None:
    assert lookup("core.carriers[].price_per_segment") is not None and lookup("campaigns.tenants[0].signup.sender")
    assert lookup("core.quiet_hours.rules.FR.closed") is not None and lookup("webhooks.allow_private") is not None
    for wrong in ("core.carriers[].price", "campaigns.tenants[].signup.bogus", "api.tenant", "store.path"):
        assert lookup(wrong) is None, wrong
    paths = dict(_toml_paths(tomllib.loads('[[campaigns.tenants]]\nname = "a"\n[campaigns.tenants.form]\nfont = "x"')))
    assert set(paths) == {"campaigns.tenants[].name", "campaigns.tenants[].form.font"}
