"""The OpenAPI 3.1 document, generated from the msgspec types in ``schemas`` (never by hand)."""

from __future__ import annotations

import functools

import msgspec

from gateway.api import schemas
from gateway.store.base import STATES

_ERR = {"$ref": "#/components/schemas/ErrorBody"}


def _op(summary: str, ok: tuple[int, str | None], body: str | None = None, *, params=(), ndjson=False):
    status, schema = ok
    responses = {str(status): {"description": "OK"} if schema is None else
                 {"description": "OK", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}}  # fmt: skip
    for code, why in (("400", "bad request"), ("401", "no or unknown API key"), ("404", "not found"),
                      ("409", "idempotency key reused with another body"), ("413", "body too large"),
                      ("422", "invalid field"), ("429", "rate limited"), ("503", "storage unavailable")):  # fmt: skip
        responses[code] = {"description": why, "content": {"application/json": {"schema": _ERR}}}
    op: dict = {"summary": summary, "responses": responses, "security": [{"bearer": []}], "parameters": list(params)}
    if body is not None:
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}
        if ndjson:
            content["application/x-ndjson"] = {"schema": {"type": "string", "description": "job line, then one recipient per line"}}
        op["requestBody"] = {"required": True, "content": content}
    return op


def _path(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_IDEM = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 200}}


@functools.cache
def document() -> bytes:
    types = (schemas.MessageIn, schemas.JobIn, schemas.MessageAccepted, schemas.JobAccepted, schemas.JobStatus,
             schemas.MessageOut, schemas.MessagePage, schemas.SuppressionIn, schemas.SuppressionOut, schemas.ErrorBody,
             schemas.InboundPageOut)  # fmt: skip
    _, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    paths = {
        "/v1/messages": {"post": _op("Send one message", (202, "MessageAccepted"), "MessageIn", params=[_IDEM])},
        "/v1/messages/{mid}": {"get": _op("A message's state and history", (200, "MessageOut"), params=[_path("mid")])},
        "/v1/jobs": {"post": _op("Submit a bulk job", (202, "JobAccepted"), "JobIn", params=[_IDEM], ndjson=True)},
        "/v1/jobs/{jid}": {"get": _op("A job's counts per state", (200, "JobStatus"), params=[_path("jid")])},
        "/v1/jobs/{jid}/messages": {"get": _op("A job's messages, paged", (200, "MessagePage"), params=[
            _path("jid"), {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATES)}},
            {"name": "after", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "unrouted", "in": "query", "schema": {"enum": ["0", "1"]},
             "description": "1: the MOs no tenant owns (operator keys only, else 404)"}])},
        **{f"/v1/jobs/{{jid}}/{a}": {"post": _op(f"{a.capitalize()} a job", (200, "JobStatus"), params=[_path("jid")])}
           for a in ("cancel", "pause", "resume")},
        "/v1/suppressions": {"get": _op("The tenant's opt-out list", (200, None)),
                             "post": _op("Add a number to the opt-out list", (201, "SuppressionIn"), "SuppressionIn")},
        "/v1/suppressions/{number}": {"delete": _op("Remove a number from the opt-out list", (200, None),
                                                    params=[_path("number")])},
        "/v1/inbound": {"get": _op("Inbound (MO) messages, keywords included, paged", (200, "InboundPageOut"), params=[
            {"name": "kind", "in": "query", "schema": {"enum": ["opt_out", "opt_in", "help", "message"]}},
            {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "unrouted", "in": "query", "schema": {"enum": ["0", "1"]},
             "description": "1: the MOs no tenant owns (operator keys only, else 404)"}])},
    }  # fmt: skip
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Sluice SMS gateway", "version": "1"},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    return msgspec.json.encode(doc)
