#!/usr/bin/env python3
"""A small, real Iceberg REST catalog server for tests, on top of pyiceberg.

  python3 rest_catalog.py WAREHOUSE [--port N]

Binds 127.0.0.1 only (port 0, the default, picks a free port), prints exactly
one line `listening on http://127.0.0.1:PORT` to stdout, then serves until
killed. Each request is logged to stderr as `METHOD PATH STATUS`.

The backing store is the same pyiceberg SqlCatalog "lake" that pyice.py uses
(`catalog()` is imported from it): SQLite at WAREHOUSE/catalog.db, or the
SQLAlchemy URI in env PYICE_CATALOG_URI; warehouse file://WAREHOUSE. So tables
made by `pyice.py make` are served here, and commits made here are seen there.

Endpoints (Iceberg REST OpenAPI, no prefix; namespace levels joined by %1F):
  GET    /v1/config                            {"defaults": {}, "overrides": {}}
  GET    /v1/namespaces[?parent=NS]            list namespaces
  POST   /v1/namespaces                        create namespace
  GET    /v1/namespaces/{ns}                   namespace properties
  HEAD   /v1/namespaces/{ns}                   204 or 404
  GET    /v1/namespaces/{ns}/tables            list tables
  POST   /v1/namespaces/{ns}/tables            create table (no staged create)
  GET    /v1/namespaces/{ns}/tables/{t}        LoadTableResult
  HEAD   /v1/namespaces/{ns}/tables/{t}        204 or 404
  POST   /v1/namespaces/{ns}/tables/{t}        commit {identifier, requirements, updates}
  DELETE /v1/namespaces/{ns}/tables/{t}        drop table (204)

Commits are parsed with pyiceberg's own pydantic TableRequirement/TableUpdate
unions and applied with SqlCatalog.commit_table (requirements are validated
against the current metadata, the catalog row is swapped conditionally).
Errors use the REST error model {"error": {"message", "type", "code"}}:
failed requirement / conflict 409 CommitFailedException, unknown table or
namespace 404, malformed body or invalid update 400, anything else 500.

OAuth2: with env REST_CATALOG_OAUTH2=CLIENT_ID:CLIENT_SECRET the server is
its own token endpoint, POST /v1/oauth/tokens (the client-credentials grant
as form fields grant_type, client_id, client_secret, scope; RFC 6749 4.4).
Wrong credentials get 401 {"error": "invalid_client", ...} (RFC 6749 5.2); a
good grant gets {"access_token", "token_type": "bearer", "expires_in",
"issued_token_type"}. Every other request then needs `Authorization: Bearer`
with a token it issued, or gets 401 NotAuthorizedException.

Vended credentials: env REST_CATALOG_VEND holding a JSON object of
storage properties (e.g. {"s3.access-key-id": ..., "s3.secret-access-key":
...}) is returned as every LoadTableResult's `config`, as a catalog with
access delegation returns a table's credentials; the request header
X-Iceberg-Access-Delegation is logged to stderr when given. With it set, the
server writes new metadata files without asking first whether they exist
(moto's signature check refuses the ListObjectsV2 that question makes).

Test hook: env REST_CATALOG_FAIL_COMMITS=N makes the first N commit requests
answer 409 CommitFailedException without applying anything, so a client's
retry path can be exercised.
"""
import json
import os
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pydantic
from pyiceberg.catalog.rest import NamespaceResponse, TableResponse
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import CommitTableResponse
from pyiceberg.table.sorting import SortOrder
from pyiceberg.table.update import TableRequirement, TableUpdate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyice import catalog  # noqa: E402

REQUIREMENTS = pydantic.TypeAdapter(list[TableRequirement])
UPDATES = pydantic.TypeAdapter(list[TableUpdate])


class HttpError(Exception):
    def __init__(self, code, kind, message):
        super().__init__(message)
        self.code, self.kind, self.message = code, kind, message


ERRORS = [  # exception type -> (HTTP status, REST error type)
    (CommitFailedException, 409, "CommitFailedException"),
    (NoSuchTableError, 404, "NoSuchTableException"),
    (NoSuchNamespaceError, 404, "NoSuchNamespaceException"),
    (TableAlreadyExistsError, 409, "AlreadyExistsException"),
    (NamespaceAlreadyExistsError, 409, "AlreadyExistsException"),
    (pydantic.ValidationError, 400, "BadRequestException"),
    (json.JSONDecodeError, 400, "BadRequestException"),
    ((KeyError, TypeError), 400, "BadRequestException"),
    (ValueError, 400, "ValidationException"),
]


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, warehouse):
        super().__init__(addr, Handler)
        self.catalog = catalog(warehouse)
        self.lock = threading.Lock()  # one catalog operation at a time
        self.fail_commits = int(os.environ.get("REST_CATALOG_FAIL_COMMITS", "0") or 0)
        self.oauth2 = os.environ.get("REST_CATALOG_OAUTH2") or None
        self.tokens = set()


def ns_tuple(segment):
    return tuple(unquote(segment).split("\x1f"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_request(self, code="-", size="-"):
        sys.stderr.write(f"{self.command} {self.path} {int(code)}\n")
        sys.stderr.flush()

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def send(self, code, body=None):
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(code)
        if code != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def body(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return json.loads(raw or b"null")

    def do_GET(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def dispatch(self):
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        delegation = self.headers.get("X-Iceberg-Access-Delegation")
        if delegation:
            sys.stderr.write(f"X-Iceberg-Access-Delegation: {delegation}\n")
        try:
            if self.server.oauth2:
                if parts == ["v1", "oauth", "tokens"] and self.command == "POST":
                    return self.grant()
                auth = self.headers.get("Authorization") or ""
                scheme, _, token = auth.partition(" ")
                if scheme.lower() != "bearer" or token not in self.server.tokens:
                    raise HttpError(401, "NotAuthorizedException", "missing or unknown bearer token")
            body = self.body() if self.command in ("POST", "PUT") else None
            if parts[:1] != ["v1"]:
                raise HttpError(404, "NotFoundException", f"no route {url.path}")
            with self.server.lock:
                code, out = self.route(parts[1:], parse_qs(url.query), body)
            self.send(code, out)
        except Exception as e:  # noqa: BLE001 - every error becomes an error model
            if isinstance(e, HttpError):
                code, kind, msg = e.code, e.kind, e.message
            else:
                code, kind = next(((c, k) for t, c, k in ERRORS if isinstance(e, t)), (500, type(e).__name__))
                msg = str(e)
                if code == 500:
                    traceback.print_exc(file=sys.stderr)
            self.send(code, {"error": {"message": msg, "type": kind, "code": code}})

    def grant(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        client_id, _, secret = self.server.oauth2.partition(":")
        if form.get("grant_type") != "client_credentials":
            return self.send(400, {"error": "unsupported_grant_type", "error_description": str(form.get("grant_type"))})
        if form.get("client_id") != client_id or form.get("client_secret") != secret:
            return self.send(401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"})
        token = f"tok-{len(self.server.tokens) + 1}-{os.urandom(6).hex()}"
        self.server.tokens.add(token)
        sys.stderr.write(f"granted a token to {client_id} for scope {form.get('scope')}\n")
        return self.send(200, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": 3600,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        })

    def route(self, p, query, body):
        cat, m = self.server.catalog, self.command
        if p == ["config"] and m == "GET":
            return 200, {"defaults": {}, "overrides": {}}
        if p == ["namespaces"] and m == "GET":
            parent = ns_tuple(query["parent"][0]) if "parent" in query else ()
            return 200, {"namespaces": [list(n) for n in cat.list_namespaces(parent)]}
        if p == ["namespaces"] and m == "POST":
            ns = tuple(body["namespace"])
            cat.create_namespace(ns, body.get("properties") or {})
            return 200, {"namespace": list(ns), "properties": body.get("properties") or {}}
        if len(p) == 2 and p[0] == "namespaces":
            ns = ns_tuple(p[1])
            if m in ("GET", "HEAD"):
                props = cat.load_namespace_properties(ns)
                if m == "HEAD":
                    return 204, None
                return 200, NamespaceResponse(namespace=list(ns), properties=props).model_dump_json().encode()
        if len(p) == 3 and p[0] == "namespaces" and p[2] == "tables":
            ns = ns_tuple(p[1])
            if m == "GET":
                return 200, {"identifiers": [{"namespace": list(t[:-1]), "name": t[-1]} for t in cat.list_tables(ns)]}
            if m == "POST":
                return 200, self.create_table(ns, body)
        if len(p) == 4 and p[0] == "namespaces" and p[2] == "tables":
            ident = ns_tuple(p[1]) + (unquote(p[3]),)
            if m in ("GET", "HEAD"):
                table = cat.load_table(ident)
                if m == "HEAD":
                    return 204, None
                return 200, load_result(table)
            if m == "POST":
                return 200, self.commit(ident, body)
            if m == "DELETE":
                cat.drop_table(ident)
                return 204, None
        raise HttpError(404, "NotFoundException", f"no route {m} {self.path}")

    def create_table(self, ns, body):
        if not isinstance(body, dict) or "name" not in body or "schema" not in body:
            raise HttpError(400, "BadRequestException", "create table needs name and schema")
        if body.get("stage-create"):
            raise HttpError(400, "BadRequestException", "staged create is not supported")
        kwargs = {"schema": Schema.model_validate(body["schema"]), "properties": body.get("properties") or {}}
        if body.get("location"):
            kwargs["location"] = body["location"]
        if body.get("partition-spec"):
            spec = dict(body["partition-spec"])
            spec["fields"] = [{"field-id": 1000 + i, **f} for i, f in enumerate(spec.get("fields", []))]
            kwargs["partition_spec"] = PartitionSpec.model_validate(spec)
        if body.get("write-order"):
            kwargs["sort_order"] = SortOrder.model_validate(body["write-order"])
        return load_result(self.server.catalog.create_table(ns + (body["name"],), **kwargs))

    def commit(self, ident, body):
        if not isinstance(body, dict) or not isinstance(body.get("updates"), list):
            raise HttpError(400, "BadRequestException", "commit body needs requirements and updates lists")
        requirements = tuple(REQUIREMENTS.validate_python(body.get("requirements") or []))
        updates = tuple(UPDATES.validate_python(body["updates"]))
        table = self.server.catalog.load_table(ident)  # 404 before any injected failure
        if self.server.fail_commits > 0:
            self.server.fail_commits -= 1
            raise CommitFailedException("injected commit failure (REST_CATALOG_FAIL_COMMITS)")
        resp = self.server.catalog.commit_table(table, requirements, updates)
        return CommitTableResponse(metadata=resp.metadata, metadata_location=resp.metadata_location).model_dump_json().encode()


VEND = json.loads(os.environ.get("REST_CATALOG_VEND") or "{}")
if VEND:
    import pyiceberg.catalog
    from pyiceberg.serializers import ToOutputFile

    class _Overwrite(ToOutputFile):
        @staticmethod
        def table_metadata(metadata, output_file, overwrite=False):
            ToOutputFile.table_metadata(metadata, output_file, overwrite=True)

    pyiceberg.catalog.ToOutputFile = _Overwrite


def load_result(table):
    return TableResponse(
        metadata_location=table.metadata_location, metadata=table.metadata, config=VEND
    ).model_dump_json().encode()


def main():
    args = sys.argv[1:]
    port = 0
    if "--port" in args:
        i = args.index("--port")
        port = int(args[i + 1])
        del args[i : i + 2]
    if len(args) != 1:
        sys.exit("usage: rest_catalog.py WAREHOUSE [--port N]")
    server = Server(("127.0.0.1", port), os.path.abspath(args[0]))
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
