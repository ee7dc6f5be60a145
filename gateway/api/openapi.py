"""The OpenAPI 3.1 document, generated from the msgspec types in ``schemas`` (never by hand)."""

from __future__ import annotations

import functools

import msgspec

from gateway.api import schemas
from gateway.store.base import JOB_STATUSES, STATES

_ERR = {"$ref": "#/components/schemas/ErrorBody"}


_ERRORS = (("400", "bad request"), ("401", "no or unknown API key"), ("404", "not found"),
           ("409", "conflict: idempotency key reused with another body, or a finished job"),
           ("413", "body too large"), ("422", "invalid field"), ("429", "rate limited"),
           ("503", "storage unavailable"))  # fmt: skip


def _json(schema: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _op(summary: str, ok: tuple[int, str | None], body: str | None = None, *, params=(), ndjson=False,
        errors=_ERRORS, security=True):  # fmt: skip
    status, schema = ok
    responses = {str(status): {"description": "OK"} if schema is None else {"description": "OK", "content": _json(schema)}}
    for code, why in errors:
        responses[code] = {"description": why, "content": {"application/json": {"schema": _ERR}}}
    op: dict = {"summary": summary, "responses": responses, "parameters": list(params)}
    if security:
        op["security"] = [{"bearer": []}]
    if body is not None:
        content = _json(body)
        if ndjson:
            content["application/x-ndjson"] = {"schema": {"type": "string", "description": "job line, then one recipient per line"}}
        op["requestBody"] = {"required": True, "content": content}
    return op


def _path(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "schema": schema}


_IDEM = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 200}}
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})
_OPERATIONAL = (("401", "no or unknown API key"), ("403", "not allowed for this key"))


def _callback(kind: str) -> dict:
    op = _op(f"An HTTP carrier's {kind} callback (signed by the carrier, no API key)", (204, None),
             errors=(("400", "unreadable"), ("401", "bad signature"), ("404", "no such HTTP carrier"),
                     ("408", "body too slow"), ("413", "body too large")), security=False, params=[_path("name")])  # fmt: skip
    op["requestBody"] = {"required": False, "content": {
        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
        "application/json": {"schema": {}}}}  # fmt: skip
    return op


@functools.cache
def document() -> bytes:
    types = (schemas.MessageIn, schemas.JobIn, schemas.MessageAccepted, schemas.JobAccepted, schemas.JobStatus,
             schemas.JobPage, schemas.MessageOut, schemas.MessagePage, schemas.SuppressionIn, schemas.SuppressionOut,
             schemas.ErrorBody, schemas.PreviewIn, schemas.PreviewOut, schemas.InboundPageOut, schemas.HealthOut, schemas.CarrierOut,
             schemas.BatchOut, list[schemas.SuppressionOut], dict[str, schemas.CarrierOut], schemas.BatchIn)  # fmt: skip
    (*_, supp_list, carriers, batch_in), components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    components["SuppressionList"] = supp_list
    components["Carriers"] = carriers
    components["BatchIn"] = batch_in
    paths = {
        "/v1/messages": {"post": _op("Send one message", (202, "MessageAccepted"), "MessageIn", params=[_IDEM])},
        "/v1/messages/batch": {"post": _op(
            "Send up to 1,000 messages, each with its own idempotency key; answered one by one, in order",
            (200, "BatchOut"), "BatchIn")},
        "/v1/preview": {"post": _op("Measure a text as it would be sent: encoding, segments, price per carrier",
                                    (200, "PreviewOut"), "PreviewIn")},
        "/v1/messages/{mid}": {"get": _op("A message's state and history", (200, "MessageOut"), params=[_path("mid")])},
        "/v1/jobs": {
            "post": _op("Submit a bulk job", (202, "JobAccepted"), "JobIn", params=[_IDEM], ndjson=True),
            "get": _op("The tenant's jobs, oldest first, paged", (200, "JobPage"), params=[
                _query("status", {"type": "string", "enum": list(JOB_STATUSES)}),
                _query("after", {"type": "string"}), _LIMIT])},
        "/v1/jobs/{jid}": {"get": _op("A job's status and counts per state", (200, "JobStatus"), params=[_path("jid")])},
        "/v1/jobs/{jid}/messages": {"get": _op("A job's messages, paged", (200, "MessagePage"), params=[
            _path("jid"), _query("state", {"type": "string", "enum": list(STATES)}),
            _query("status", {"type": "string", "enum": list(STATES), "deprecated": True}),
            _query("after", {"type": "string"}), _LIMIT])},
        **{f"/v1/jobs/{{jid}}/{a}": {"post": _op(f"{a.capitalize()} a job", (200, "JobStatus"), params=[_path("jid")])}
           for a in ("cancel", "pause", "resume")},
        "/v1/suppressions": {"get": _op("The tenant's opt-out list", (200, "SuppressionList")),
                             "post": _op("Add a number to the opt-out list", (201, "SuppressionIn"), "SuppressionIn")},
        "/v1/suppressions/{number}": {"delete": _op("Remove a number from the opt-out list", (200, None),
                                                    params=[_path("number")])},
        "/v1/inbound": {"get": _op("Inbound (MO) messages, keywords included, paged", (200, "InboundPageOut"), params=[
            _query("kind", {"enum": ["opt_out", "opt_in", "help", "message"]}),
            _query("after", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}), _LIMIT,
            {**_query("unrouted", {"enum": ["0", "1", "false", "true"]}),
             "description": "1: the MOs no tenant owns (operator keys only, else 404)"}])},
        "/v1/carriers": {"get": _op("Each carrier's health, queue and link (operational)", (200, "Carriers"),
                                    errors=(*_OPERATIONAL, ("429", "rate limited")))},
        "/v1/carriers/{name}/receipts": {"post": _callback("delivery receipt")},
        "/v1/carriers/{name}/inbound": {"post": _callback("inbound message")},
        "/healthz": {"get": _op("Liveness: the process answers", (200, "HealthOut"), errors=(), security=False)},
        "/readyz": {"get": {**_op("Readiness: ready to take work", (200, "HealthOut"), errors=(), security=False),
                            "responses": {"200": {"description": "ready", "content": _json("HealthOut")},
                                          "503": {"description": "starting", "content": _json("HealthOut")}}}},
        "/metrics": {"get": {**_op("Prometheus metrics (text exposition format)", (200, None), errors=_OPERATIONAL,
                                   security=False),
                             "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **{c: {"description": w, "content": {"application/json": {"schema": _ERR}}}
                                              for c, w in _OPERATIONAL}}}},
        "/openapi.json": {"get": {"summary": "This document", "parameters": [], "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }  # fmt: skip
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Sluice SMS gateway", "version": "1"},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    return msgspec.json.encode(doc)


def undocumented(routes) -> list[tuple[str, str]]:
    """The (method, path template) pairs of ``routes`` that the document does not describe."""
    paths = msgspec.json.decode(document())["paths"]
    return [(m, p) for m, p in routes if m.lower() not in paths.get(p, {})]
