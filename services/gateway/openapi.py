"""The OpenAPI 3.1 document, generated from the same routes and descriptors the gateway serves,
plus the hand-written auth and health routes, and a self-contained HTML rendering of it."""

from __future__ import annotations

import html
import re
from typing import Any

from google.protobuf import descriptor

from gateway.routes import Route
from gateway.transcode import USER_ID_FIELDS, resolve_field

FD = descriptor.FieldDescriptor
# Descriptors are typed Any below: the pure-Python and upb descriptor classes do not unify for mypy.

_SCALARS: dict[int, dict[str, Any]] = {
    FD.TYPE_DOUBLE: {"type": "number"},
    FD.TYPE_FLOAT: {"type": "number"},
    FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FD.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FD.TYPE_FIXED32: {"type": "integer", "format": "int32", "minimum": 0},
    # proto3 JSON prints 64-bit integers as strings (JavaScript numbers lose precision).
    FD.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FD.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FD.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FD.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FD.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int32Value": {"type": "integer"},
    "google.protobuf.DoubleValue": {"type": "number"},
    "google.protobuf.FieldMask": {"type": "string"},
}

ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "request_id", "reason", "args"],
    "properties": {
        "code": {"type": "string", "description": "gRPC status name, e.g. NOT_FOUND, UNAUTHENTICATED"},
        "message": {"type": "string", "description": "English, for API clients and logs"},
        "request_id": {"type": "string"},
        "reason": {
            "type": "string",
            "description": 'stable name of what went wrong, e.g. EMAIL_TAKEN, INVALID_CREDENTIALS; "" when none',
        },
        "args": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": 'the values the reason\'s sentence needs, e.g. {"min": "8", "max": "256"}',
        },
    },
}


class SchemaBuilder:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, desc: Any, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        if desc.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[desc.full_name])
        name = desc.full_name if not skip else f"{desc.full_name}.Body"
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder first: recursive messages terminate
            self.schemas[name] = self._message(desc, skip)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message(self, desc: Any, skip: frozenset[str]) -> dict[str, Any]:
        properties = {f.name: self.field(f) for f in desc.fields if f.name not in skip}
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def _single(self, field: Any) -> dict[str, Any]:
        if field.type == FD.TYPE_ENUM:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        if field.message_type is not None:
            return self.ref(field.message_type)
        return dict(_SCALARS[field.type])

    def field(self, field: Any) -> dict[str, Any]:
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self._single(message_type.fields_by_name["value"])}
        if field.is_repeated:
            return {"type": "array", "items": self._single(field)}
        return self._single(field)


def _query_parameters(route: Route, builder: SchemaBuilder, bound: set[str]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []

    def walk(desc: Any, prefix: str, depth: int) -> None:
        for field in desc.fields:
            name = prefix + field.name
            if name in bound or name.split(".")[0] in bound or field.name in USER_ID_FIELDS:
                continue
            is_message = field.message_type is not None and field.message_type.full_name not in _WELL_KNOWN
            if is_message:
                if depth < 2 and not field.is_repeated and not field.message_type.GetOptions().map_entry:
                    walk(field.message_type, name + ".", depth + 1)
                continue
            schema = builder.field(field)
            # Document the short form ("file_name" for "metadata.file_name") where it is unambiguous.
            short = resolve_field(root, field.name)
            if prefix and short is not None and ".".join(short[0]) == name:
                name = field.name
            params.append({"name": name, "in": "query", "required": False, "schema": schema})

    root = route.input_class.DESCRIPTOR
    walk(root, "", 0)
    return params


def _path(template: str) -> str:
    # "/v1/files/{file_id=*}:watch" -> "/v1/files/{file_id}:watch"
    return re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", template)


def _error_responses() -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        status: {"description": text, "content": content}
        for status, text in [
            ("400", "invalid request"),
            ("401", "missing or invalid token"),
            ("404", "not found"),
            ("429", "rate limited (see Retry-After)"),
            ("default", "error"),
        ]
    }


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _auth_paths() -> dict[str, Any]:
    user = {
        "type": "object",
        "required": ["user_id", "email", "display_name"],
        "properties": {
            "user_id": {"type": "string"},
            "email": {"type": "string"},
            "display_name": {"type": "string"},
            "is_admin": {"type": "boolean", "description": "may open the admin-only routes (admin role)"},
        },
    }
    tokens = {
        "type": "object",
        "required": ["access_token", "refresh_token", "token_type", "expires_in", "user"],
        "properties": {
            "access_token": {"type": "string"},
            "refresh_token": {"type": "string"},
            "token_type": {"type": "string", "const": "bearer"},
            "expires_in": {"type": "integer"},
            "user": user,
        },
    }
    refresh_body = {
        "type": "object",
        "required": ["refresh_token"],
        "properties": {"refresh_token": {"type": "string"}},
    }
    errors = _error_responses()

    def op(op_id: str, body: dict[str, Any], ok: str, response: dict[str, Any] | None) -> dict[str, Any]:
        responses: dict[str, Any] = {**errors}
        responses[ok] = {"description": "ok"}
        if response is not None:
            responses[ok]["content"] = {"application/json": {"schema": response}}
        return {
            "post": {"operationId": op_id, "tags": ["auth"], "requestBody": _json_body(body), "responses": responses}
        }

    register = {
        "type": "object",
        "required": ["email", "password", "display_name"],
        "properties": {
            "email": {"type": "string", "format": "email"},
            "password": {"type": "string", "minLength": 8, "maxLength": 256},
            "display_name": {"type": "string", "minLength": 1, "maxLength": 100},
        },
    }
    login = {
        "type": "object",
        "required": ["email", "password"],
        "properties": {"email": {"type": "string"}, "password": {"type": "string"}},
    }
    return {
        "/v1/auth/register": op("auth.register", register, "201", tokens),
        "/v1/auth/login": op("auth.login", login, "200", tokens),
        "/v1/auth/refresh": op("auth.refresh", refresh_body, "200", tokens),
        "/v1/auth/logout": op("auth.logout", refresh_body, "204", None),
    }


def _config_path() -> dict[str, Any]:
    config = {
        "type": "object",
        "required": ["upload_max_bytes", "max_body_bytes", "is_admin"],
        "properties": {
            "upload_max_bytes": {"type": "integer", "description": "largest upload accepted (UPLOAD_MAX_BYTES)"},
            "max_body_bytes": {"type": "integer", "description": "largest JSON request body (MAX_BODY_BYTES)"},
            "is_admin": {"type": "boolean", "description": "the caller may open the admin-only routes"},
        },
    }
    return {
        "get": {
            "operationId": "gateway.config",
            "tags": ["gateway"],
            "summary": "The gateway's limits the web app checks before sending, and the caller's role",
            "security": [{"bearerAuth": []}],
            "responses": {
                "200": {"description": "ok", "content": {"application/json": {"schema": config}}},
                **_error_responses(),
            },
        }
    }


def build_openapi(routes: list[Route], *, admin_backends: frozenset[str] = frozenset()) -> dict[str, Any]:
    builder = SchemaBuilder()
    paths: dict[str, Any] = {}
    for route in sorted(routes, key=lambda r: (r.template.template, r.http_method)):
        fields = route.template.fields
        input_desc = route.input_class.DESCRIPTOR
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[^/]+$"}}
            for name in fields
        ]
        bound = set(fields)
        operation: dict[str, Any] = {
            "operationId": route.operation_id,
            "tags": [route.backend],
            "summary": f"{route.method.containing_service.name}.{route.method.name}",
            "security": [{"bearerAuth": []}],
        }
        if route.body == "*":
            operation["requestBody"] = _json_body(builder.ref(input_desc, skip=frozenset(bound | USER_ID_FIELDS)))
        elif route.body and route.client_streaming:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/octet-stream": {
                        "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "contentMediaType": "application/octet-stream"}},
                        }
                    },
                },
            }
            bound.add(route.body)
        elif route.body:
            operation["requestBody"] = _json_body(builder.field(input_desc.fields_by_name[route.body]))
            bound.add(route.body)
        if route.body != "*":
            parameters += _query_parameters(route, builder, bound)
        if route.server_streaming and not route.http_body:
            parameters.append(
                {
                    "name": "access_token",
                    "in": "query",
                    "required": False,
                    "description": "for EventSource, which cannot send an Authorization header",
                    "schema": {"type": "string"},
                }
            )
        if parameters:
            operation["parameters"] = parameters
        output = builder.ref(route.output_class.DESCRIPTOR)
        if route.http_body:
            ok = {
                "description": "The content itself, with its own Content-Type; a named file comes as an "
                "attachment (Content-Disposition).",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        elif route.server_streaming:
            ok = {
                "description": "Server-sent events; each `data:` line is one JSON message of the schema. "
                "A failure after the stream started arrives as `event: error` with an Error body.",
                "content": {"text/event-stream": {"schema": {"type": "string"}, "x-event-schema": output}},
            }
        else:
            ok = {"description": "ok", "content": {"application/json": {"schema": output}}}
        operation["responses"] = {"200": ok, **_error_responses()}
        if route.backend in admin_backends:
            operation["description"] = "Administrators only (the admin role); anyone else gets 403."
            operation["responses"]["403"] = {
                "description": "not an administrator",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        paths.setdefault(_path(route.template.template), {})[route.http_method.lower()] = operation
    paths.update(_auth_paths())
    paths["/v1/config"] = _config_path()
    paths["/healthz"] = {
        "get": {"operationId": "healthz", "tags": ["health"], "responses": {"200": {"description": "alive"}}}
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "tags": ["health"],
            "responses": {
                "200": {"description": "required backends serving; status 'degraded' names optional ones that are not"},
                "503": {"description": "a required backend (storage) is not serving"},
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "PTIT Study Assistant API",
            "version": "1",
            "description": "Generated by the gateway from the backends' gRPC descriptors (google.api.http). "
            "JSON uses proto field names; 64-bit integers are strings; "
            "errors are {code, message, request_id, reason, args}.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, **dict(sorted(builder.schemas.items()))},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


DOCS_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:960px;padding:1rem 2rem;color:#1b1b1b}
h2{margin-top:2rem;border-bottom:1px solid #ddd}
.op{border:1px solid #ddd;border-radius:6px;margin:.8rem 0;padding:.6rem 1rem}
.m{display:inline-block;min-width:4.5rem;font-weight:700;text-transform:uppercase}.get{color:#0a6}.post{color:#06c}
.delete{color:#c22}.patch{color:#a60}code,pre{background:#f4f4f4;padding:0 .25rem;border-radius:3px}
pre{padding:.5rem;overflow:auto;font-size:13px}table{border-collapse:collapse}
td{padding:.1rem .6rem .1rem 0;vertical-align:top}
"""


def _schema_text(schema: Any) -> str:
    import json

    return html.escape(json.dumps(schema, indent=2, ensure_ascii=False))


def render_docs(document: dict[str, Any]) -> str:
    """The OpenAPI document as one HTML page: no scripts, no CDN, fits the strict CSP."""
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>API docs</title>",
        f"<style>{DOCS_STYLE}</style></head><body>",
        f"<h1>{html.escape(document['info']['title'])}</h1><p>{html.escape(document['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. Authenticate with "
        "<code>Authorization: Bearer &lt;access_token&gt;</code> from <code>/v1/auth/login</code>.</p>",
    ]
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            out.append(
                f"<div class='op'><span class='m {method}'>{method}</span> <code>{html.escape(path)}</code>"
                f" <small>{html.escape(op.get('summary', op.get('operationId', '')))}</small>"
            )
            if params := op.get("parameters"):
                rows = "".join(
                    f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
                    f"<td>{html.escape(str(p['schema'].get('type', p['schema'].get('$ref', ''))))}</td></tr>"
                    for p in params
                )
                out.append(f"<table>{rows}</table>")
            if body := op.get("requestBody"):
                out.append(
                    f"<details><summary>request body</summary><pre>{_schema_text(body['content'])}</pre></details>"
                )
            ok = next((v for k, v in op["responses"].items() if k.startswith("2")), None)
            if ok and "content" in ok:
                out.append(f"<details><summary>response</summary><pre>{_schema_text(ok['content'])}</pre></details>")
            out.append("</div>")
    out.append("<h2>Schemas</h2>")
    for name, schema in document["components"]["schemas"].items():
        out.append(f"<h3 id='{html.escape(name)}'>{html.escape(name)}</h3><pre>{_schema_text(schema)}</pre>")
    out.append("</body></html>")
    return "".join(out)
