#!/usr/bin/env python3
"""Standalone kmock Kubernetes API emulator for the Rust integration tests.

Usage: python3 tests/k8s/kmock_server.py [--port 0] [--rbac FILE --user NAME] [--log FILE]

kmock stores and routes; the STRICT FACADE below (what the Rust tests talk to)
puts back what a real kube-apiserver does and kmock does not, so the tests are
as strict as the API server where it matters to the agent:
- RBAC (--rbac deploy/k8s/rbac.yaml): every request of the agent (no
  Authorization header) is authorized as --user against the ClusterRoles and
  Roles bound to it, with the RBAC authorizer's rules (verbs, API groups,
  resources with "res/sub" subresources and "*/sub", resourceNames; Roles
  only in their namespace; Role/RoleBinding without a namespace get the
  kustomization's, "remediate"). A denial is the API server's 403 Status with
  its exact message. Non-resource URLs (discovery) are allowed, as
  system:discovery allows them. Requests with "Authorization: Bearer admin"
  (the tests' own seeding and controllers) bypass RBAC and are not logged.
- --log FILE: one JSON line per agent request: verb, group, resource,
  subresource, namespace, name, allowed (what the RBAC test evaluates).
- create: uid, resourceVersion, creationTimestamp, generation 1 and the URL's
  namespace are set by the server (a client's uid is ignored), status is
  dropped for kinds with a status subresource (pods excepted: no kubelet
  runs here to write it); 201.
- resourceVersion: one counter bumped on every write; a PATCH carrying
  metadata.resourceVersion other than the stored one is 409 Conflict with the
  API server's message; DELETE preconditions (uid, resourceVersion) likewise.
- PATCH: merge-patch (RFC 7386) and strategic-merge-patch with the API's
  merge keys for the lists the agent touches (containers, initContainers and
  ephemeralContainers by name, env by name, ports by containerPort,
  volumeMounts by mountPath, volumes by name, conditions by type,
  ownerReferences by uid; other lists replaced); metadata.generation is
  bumped when spec changes (apps/v1 workloads, custom resources); for kinds
  with a status subresource a PATCH of the object ignores status and a PATCH
  of /status changes only status, as the API server does.
- POST pods/NAME/eviction: the pod's uid precondition, then every
  PodDisruptionBudget (policy/v1) whose selector matches the pod: with
  status.disruptionsAllowed < 1 the answer is the API server's 429 with the
  DisruptionBudget cause naming the budget; else disruptionsAllowed is
  decremented and the pod deleted (201).
- LIST honours equality labelSelectors (k=v,k2=v2) and fieldSelectors
  (spec.nodeName=n, any dotted path, = and !=), and answers the current
  resourceVersion. For pods and events only the field labels the API server
  supports are accepted (events: involvedObject.name, .uid, ..., reason,
  type, source; pods: spec.nodeName, status.phase, ...); any other is its
  400 "field label not supported", on LIST and WATCH.
- GET pods/NAME/log (RBAC: get pods/log): the text seeded for the container
  instance with POST /_kmock/logs (admin) {"containerID", "text"}, found as
  the kubelet does: the current instance's (status containerID) or, with
  previous=true, lastState.terminated.containerID, else the real 400s
  ("previous terminated container "C" in pod "P" not found", "a container
  name must be specified for pod P, choose one of: [...]", "container C is
  not valid for pod P", "... is waiting to start: REASON"); tailLines and
  limitBytes honoured; text/plain.
- WATCH through the facade: the fieldSelector as for LIST; ?resourceVersion=V
  replays only objects changed after V (kmock replays everything); a V older
  than the last compaction is the API server's 410 Gone, as an ERROR event.
  POST /_kmock/compact (admin) compacts at the current resourceVersion and
  ends every open watch with that 410 ERROR event, as etcd compaction does.
  POST /_kmock/close-watches (admin) ends every open watch cleanly (as the
  API server's timeoutSeconds or a restart does); the client resumes.
Not emulated (the tests play these parts, or recorded responses cover them):
controllers (ReplicaSet, Deployment, StatefulSet, DaemonSet, PDB status),
graceful pod termination (a deleted pod is gone at once), admission, field
validation, set-based selectors, BOOKMARK events, timeoutSeconds.

Binds 127.0.0.1 only, prints one line `KMOCK_URL=http://127.0.0.1:PORT` when ready,
serves until SIGTERM/SIGINT (exit code 0, open watches are cut after ~1s).

Resources: kmock's bundled built-ins (pods, namespaces, events, apps/v1 deployments,
replicasets, statefulsets, daemonsets, coordination.k8s.io/v1 leases, ...) plus
sparkoperator.k8s.io/v1beta2 sparkapplications registered below.

OBSERVED with curl against kmock 0.8 (aiohttp 3.14.5). All objects are plain JSON
dicts: no validation, no defaulting, no controllers (nothing reacts to anything).

WORKS
- Discovery: /version, /api, /apis, /apis/<group>, /apis/<group>/<version>,
  /api/v1 -> 200. Quirks: /api/v1 answers "groupVersion": "/v1" (not "v1");
  subresource entries (e.g. deployments/scale, pods/eviction) carry the parent's
  kind; preferredVersion of multi-version groups is arbitrary (set order).
- POST create (namespaced) -> 200 (not 201), echoes the body unchanged; duplicate
  name -> 409. The URL namespace is NOT copied into metadata.namespace; no uid,
  creationTimestamp, generation or resourceVersion are added.
- GET object -> 200 / 404 if absent. Also GET .../<name>/status and .../<name>/scale
  return the whole parent object (see scale below).
- LIST namespaced and all-namespaces (/api/v1/pods) -> 200, but without
  kind/apiVersion (only {"metadata": {"resourceVersion": "..."}, "items": [...]}).
  labelSelector and fieldSelector are IGNORED: every object is returned.
  LIST of an undeclared resource -> 404.
- PATCH with a JSON object body is a recursive dict merge (null deletes a key, lists
  are replaced wholesale) REGARDLESS of Content-Type: merge-patch, strategic-merge-
  patch (no list merging by key: containers [c] patched with [d] -> [d]) and
  apply-patch+yaml (sent as JSON) all behave the same -> 200 with the new object.
  PATCH with a JSON array body is an RFC 6902 JSON patch -> 200; a failing "test"
  op -> 500 (JsonPatchTestFailed), not 422. PATCH of a missing object -> 404.
- DELETE object -> 200 with the last object; again -> 404. With finalizers it only
  sets metadata.deletionTimestamp; a later PATCH removing finalizers deletes it.
- Watch (?watch=true) -> 200, newline-delimited {"type","object"} events,
  Content-Type application/octet-stream: first ADDED for every existing object,
  then live ADDED/MODIFIED/DELETED. resourceVersion, labelSelector and
  timeoutSeconds are IGNORED (always a full replay, never ends, no BOOKMARK).
- PATCH on .../status and .../scale patches the PARENT object (status works as a
  plain merge). sparkapplications CRUD and status patch work like the built-ins.

DOES NOT WORK
- PUT / replace (any object, e.g. leases/<name>, deployments/<name>/scale)
  -> 404 "Endpoint Not Found". kmock has no action for PUT.
- resourceVersion: never set or bumped by the server (lists say "..."). A stale or
  arbitrary metadata.resourceVersion in a PATCH is NOT checked (200, no 409); it is
  just merged into the stored object as data.
- Namespaces: GET/POST /api/v1/namespaces -> 500 (kmock URL parser crashes,
  ValueError) and /api/v1/namespaces/<name> -> 404 (parsed as a namespace with no
  resource). Namespace objects cannot be created, read or listed at all.
- POST pods/<name>/eviction -> 404 "Endpoint Not Found" (POST on a named URL has no
  action); the pod is untouched.
- deployments/scale: GET -> 200 but returns the Deployment itself, not a
  autoscaling/v1 Scale; PATCH {"spec":{"replicas":N}} -> 200 and does update the
  Deployment's spec.replicas, but returns the Deployment; a body carrying
  apiVersion/kind (as a Scale object would) OVERWRITES the Deployment's
  apiVersion/kind with autoscaling/v1 Scale. PUT -> 404.
- DELETE collection (DELETE on a list URL, e.g. ?labelSelector=) -> 404.
"""
import argparse
import asyncio
import copy
import datetime
import json
import signal
import sys
import uuid

import aiohttp
import aiohttp.web
import kmock
import yaml

# Not in kmock's bundled resources.json.gz (built-ins only): register the CRD by hand.
SPARK_APPS = 'sparkoperator.k8s.io/v1beta2/sparkapplications'
SPARK_INFO = kmock.ResourceInfo(
    kind='SparkApplication', singular='sparkapplication', namespaced=True,
    shortnames={'sparkapp'}, subresources={'status'},
    verbs={'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'},
)

# Kinds whose status is a subresource, and whose spec changes bump generation.
WITH_STATUS = {'pods', 'deployments', 'replicasets', 'statefulsets', 'daemonsets',
               'sparkapplications', 'poddisruptionbudgets'}
GENERATION = {'deployments', 'replicasets', 'statefulsets', 'daemonsets', 'sparkapplications',
              'poddisruptionbudgets'}
MERGE_KEYS = {'containers': 'name', 'initContainers': 'name', 'ephemeralContainers': 'name',
              'env': 'name', 'ports': 'containerPort', 'volumeMounts': 'mountPath',
              'volumes': 'name', 'conditions': 'type', 'ownerReferences': 'uid'}
ADMIN = 'Bearer admin'


def request_info(method, path, query):
    """The API server's RequestInfo: verb, group, version, resource, subresource, namespace, name."""
    parts = [p for p in path.split('/') if p]
    if not parts or parts[0] not in ('api', 'apis'):
        return None
    if parts[0] == 'api':
        group, rest = '', parts[1:]
    else:
        if len(parts) < 3:
            return None
        group, rest = parts[1], parts[2:]
    if not rest:
        return None
    version, rest = rest[0], rest[1:]
    ns = ''
    if len(rest) >= 2 and rest[0] == 'namespaces':
        ns = rest[1]
        rest = rest[2:]
        if not rest:  # the namespace object itself
            rest = ['namespaces', ns]
            ns = ''
    if not rest:
        return None
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ''
    sub = rest[2] if len(rest) > 2 else ''
    verb = {'GET': 'get', 'POST': 'create', 'PUT': 'update', 'PATCH': 'patch',
            'DELETE': 'delete'}.get(method, method.lower())
    if not name:
        if method == 'GET':
            verb = 'watch' if query.get('watch') in ('1', 'true') else 'list'
        elif method == 'DELETE':
            verb = 'deletecollection'
    return {'verb': verb, 'group': group, 'version': version, 'resource': resource,
            'subresource': sub, 'namespace': ns, 'name': name}


class Rbac:
    def __init__(self, path, user):
        self.user = user
        docs = [d for d in yaml.safe_load_all(open(path)) if d]
        self.roles = {}
        for d in docs:
            if d['kind'] in ('Role', 'ClusterRole'):
                ns = d['metadata'].get('namespace', 'remediate') if d['kind'] == 'Role' else ''
                self.roles[(d['kind'], ns, d['metadata']['name'])] = d.get('rules') or []
        # (namespace or '' for cluster-wide, rules)
        self.grants = []
        for d in docs:
            if d['kind'] not in ('RoleBinding', 'ClusterRoleBinding'):
                continue
            if not any(self.subject(s, d) for s in d.get('subjects') or []):
                continue
            ref = d['roleRef']
            ns = d['metadata'].get('namespace', 'remediate') if d['kind'] == 'RoleBinding' else ''
            key = (ref['kind'], ns if ref['kind'] == 'Role' else '', ref['name'])
            self.grants.append((ns, self.roles.get(key, [])))

    def subject(self, s, binding):
        if s.get('kind') == 'ServiceAccount':
            ns = s.get('namespace') or binding['metadata'].get('namespace', 'remediate')
            return self.user == f"system:serviceaccount:{ns}:{s['name']}"
        return s.get('kind') == 'User' and s.get('name') == self.user

    @staticmethod
    def rule_allows(r, info):
        if not any(v in ('*', info['verb']) for v in r.get('verbs', [])):
            return False
        if not any(g in ('*', info['group']) for g in r.get('apiGroups', [])):
            return False
        combined = info['resource'] + ('/' + info['subresource'] if info['subresource'] else '')
        if not any(x == '*' or x == combined or (info['subresource'] and x == '*/' + info['subresource'])
                   for x in r.get('resources', [])):
            return False
        names = r.get('resourceNames') or []
        return not names or info['name'] in names

    def allows(self, info):
        for ns, rules in self.grants:
            if ns and ns != info['namespace']:
                continue
            if any(self.rule_allows(r, info) for r in rules):
                return True
        return False

    def forbidden(self, info):
        combined = info['resource'] + ('/' + info['subresource'] if info['subresource'] else '')
        gr = info['resource'] + ('.' + info['group'] if info['group'] else '')
        if info['namespace']:
            why = (f'User "{self.user}" cannot {info["verb"]} resource "{combined}" in API group '
                   f'"{info["group"]}" in the namespace "{info["namespace"]}"')
        else:
            why = (f'User "{self.user}" cannot {info["verb"]} resource "{combined}" in API group '
                   f'"{info["group"]}" at the cluster scope')
        msg = f'{gr} "{info["name"]}" is forbidden: {why}' if info['name'] else f'{gr} is forbidden: {why}'
        return status(403, 'Forbidden', msg, {'name': info['name'], 'group': info['group'],
                                               'kind': info['resource']})


def status(code, reason, message, details=None):
    body = {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
            'message': message, 'reason': reason, 'code': code}
    if details is not None:
        body['details'] = details
    return aiohttp.web.json_response(body, status=code)


def merge(cur, patch, strategic):
    """RFC 7386 merge patch, or a strategic merge with the API's list merge keys."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(cur) if isinstance(cur, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif strategic and k in MERGE_KEYS and isinstance(v, list) and isinstance(out.get(k), list):
            key = MERGE_KEYS[k]
            items = [copy.deepcopy(x) for x in out[k]]
            for pv in v:
                i = next((i for i, x in enumerate(items)
                          if isinstance(x, dict) and isinstance(pv, dict) and x.get(key) == pv.get(key)), None)
                if isinstance(pv, dict) and pv.get('$patch') == 'delete':
                    if i is not None:
                        items.pop(i)
                elif i is None:
                    items.append(copy.deepcopy(pv))
                else:
                    items[i] = merge(items[i], pv, strategic)
            out[k] = items
        elif isinstance(v, dict):
            out[k] = merge(out.get(k), v, strategic)
        else:
            out[k] = copy.deepcopy(v)
    return out


def diff(cur, new):
    """The merge patch that turns cur into new (kmock stores by merging)."""
    if not isinstance(cur, dict) or not isinstance(new, dict):
        return new
    out = {}
    for k in cur:
        if k not in new:
            out[k] = None
    for k, v in new.items():
        if k not in cur:
            out[k] = v
        elif cur[k] != v:
            out[k] = diff(cur[k], v) if isinstance(v, dict) and isinstance(cur[k], dict) else v
    return out


def selector_matches(sel, labels):
    for term in [t for t in sel.split(',') if t]:
        if '!=' in term:
            k, v = term.split('!=', 1)
            if labels.get(k) == v:
                return False
        elif '=' in term:
            k, v = term.replace('==', '=').split('=', 1)
            if labels.get(k) != v:
                return False
        elif labels.get(term) is None:
            return False
    return True


def field_value(obj, path):
    cur = obj
    for part in path.split('.'):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def fields_match(sel, obj):
    for term in [t for t in (sel or '').split(',') if t]:
        if '!=' in term:
            k, v = term.split('!=', 1)
            if str(field_value(obj, k) or '') == v:
                return False
        elif '=' in term:
            k, v = term.replace('==', '=').split('=', 1)
            if str(field_value(obj, k) or '') != v:
                return False
    return True


# The field labels the API server can select on (its field label conversion
# functions); any other is a 400, as there. Only the kinds the agent lists by
# field; other kinds accept any dotted path here.
SELECTABLE = {
    'pods': {'metadata.name', 'metadata.namespace', 'spec.nodeName', 'spec.restartPolicy',
             'spec.schedulerName', 'spec.serviceAccountName', 'spec.hostNetwork', 'status.phase',
             'status.podIP', 'status.podIPs', 'status.nominatedNodeName'},
    'events': {'metadata.name', 'metadata.namespace', 'involvedObject.kind',
               'involvedObject.namespace', 'involvedObject.name', 'involvedObject.uid',
               'involvedObject.apiVersion', 'involvedObject.resourceVersion',
               'involvedObject.fieldPath', 'reason', 'reportingComponent', 'source', 'type'},
}
# Field labels that are not the object's path.
FIELD_PATHS = {('events', 'source'): 'source.component'}


def unsupported_field(info, fsel, lsel):
    """The API server's 400 for a field selector on a label it cannot select on, or None."""
    allowed = SELECTABLE.get(info['resource'])
    if allowed is None or not fsel:
        return None
    for term in [t for t in fsel.split(',') if t]:
        k = term.split('!=', 1)[0] if '!=' in term else term.replace('==', '=').split('=', 1)[0]
        if k not in allowed:
            gv = f"{info['group']}/{info['version']}" if info['group'] else f"/{info['version']}"
            return status(400, 'BadRequest',
                          f'Unable to find "{gv}, Resource={info["resource"]}" that match label selector '
                          f'"{lsel or ""}", field selector "{fsel}": field label not supported: {k}')
    return None


def select_fields(resource, sel):
    """A field selector with its labels as object paths."""
    out = []
    for term in [t for t in (sel or '').split(',') if t]:
        op = '!=' if '!=' in term else '='
        k, v = term.split('!=', 1) if op == '!=' else term.replace('==', '=').split('=', 1)
        out.append(f'{FIELD_PATHS.get((resource, k), k)}{op}{v}')
    return ','.join(out)


def gone(rv):
    return {'type': 'ERROR', 'object': {
        'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
        'message': f'too old resource version: {rv}', 'reason': 'Expired', 'code': 410}}


class Facade:
    def __init__(self, inner, rbac, log):
        self.inner = inner
        self.rbac = rbac
        self.log = open(log, 'a', buffering=1) if log else None
        self.rv = 1000
        self.lock = asyncio.Lock()
        self.http = None
        self.compacted = 0
        self.watches = set()
        self.logs = {}

    def next_rv(self):
        self.rv += 1
        return str(self.rv)

    async def call(self, method, path, body=None, query=None, ctype='application/merge-patch+json'):
        data = None if body is None else json.dumps(body)
        async with self.http.request(method, self.inner + path, data=data, params=query,
                                     headers={'content-type': ctype}) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def handle(self, request):
        info = request_info(request.method, request.path, request.query)
        admin = request.headers.get('Authorization') == ADMIN
        if request.path == '/_kmock/compact' and admin:
            self.compacted = self.rv
            for w in list(self.watches):
                try:
                    await w.write((json.dumps(gone(self.rv)) + '\n').encode())
                except Exception:
                    pass
                self.watches.discard(w)
            return aiohttp.web.json_response({'compacted': self.compacted})
        if request.path == '/_kmock/logs' and admin:
            # What a container instance wrote, by its containerID (the
            # kubelet's view): {"containerID": "containerd://...", "text": "..."}.
            seed = await request.json()
            self.logs[seed['containerID']] = seed.get('text') or ''
            return aiohttp.web.json_response({'seeded': seed['containerID']})
        if request.path == '/_kmock/close-watches' and admin:
            n = len(self.watches)
            for w in list(self.watches):
                self.watches.discard(w)
                try:
                    await w.write_eof()
                except Exception:
                    pass
            return aiohttp.web.json_response({'closed': n})
        if info and not admin and self.rbac:
            allowed = self.rbac.allows(info)
            if self.log:
                self.log.write(json.dumps(dict(info, allowed=allowed)) + '\n')
            if not allowed:
                return self.rbac.forbidden(info)
        body = await request.read()
        if info is not None and request.query.get('watch') in ('1', 'true'):
            return await self.watch(request, info)
        if info is None:
            return await self.forward(request, body)
        async with self.lock:
            return await self.strict(request, info, body)

    async def forward(self, request, body):
        async with self.http.request(request.method, self.inner + request.path_qs, data=body or None,
                                     headers={'content-type': request.headers.get('content-type', 'application/json')}) as r:
            resp = aiohttp.web.StreamResponse(status=r.status, headers={'content-type': r.headers.get('content-type', 'application/json')})
            await resp.prepare(request)
            async for chunk in r.content.iter_any():
                await resp.write(chunk)
            return resp

    async def watch(self, request, info):
        bad = unsupported_field(info, request.query.get('fieldSelector'), request.query.get('labelSelector'))
        if bad:
            return bad
        since = request.query.get('resourceVersion') or ''
        sel = select_fields(info['resource'], request.query.get('fieldSelector'))
        lsel = request.query.get('labelSelector')
        resp = aiohttp.web.StreamResponse(status=200, headers={'content-type': 'application/json'})
        await resp.prepare(request)
        if since not in ('', '0') and int(since) < self.compacted:
            await resp.write((json.dumps(gone(since)) + '\n').encode())
            return resp
        self.watches.add(resp)
        try:
            async with self.http.get(self.inner + request.path, params={'watch': 'true'}) as r:
                async for line in r.content:
                    if resp not in self.watches:
                        break
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    obj = ev.get('object') or {}
                    md = obj.get('metadata') or {}
                    if ev.get('type') != 'DELETED' and since not in ('', '0') \
                            and int(md.get('resourceVersion') or 0) <= int(since):
                        continue
                    if not fields_match(sel, obj):
                        continue
                    if lsel and not selector_matches(lsel, md.get('labels') or {}):
                        continue
                    await resp.write((json.dumps(ev) + '\n').encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watches.discard(resp)
        return resp

    def obj_path(self, info):
        base = '/api/v1' if not info['group'] else f"/apis/{info['group']}/{info['version']}"
        ns = f"/namespaces/{info['namespace']}" if info['namespace'] else ''
        return f"{base}{ns}/{info['resource']}/{info['name']}"

    async def strict(self, request, info, body):
        m, res, sub = request.method, info['resource'], info['subresource']
        payload = json.loads(body) if body else None
        gr = res + ('.' + info['group'] if info['group'] else '')
        if m == 'GET' and not info['name']:
            bad = unsupported_field(info, request.query.get('fieldSelector'), request.query.get('labelSelector'))
            if bad:
                return bad
            code, lst = await self.call('GET', request.path)
            sel = request.query.get('labelSelector')
            if code == 200 and isinstance(lst, dict) and sel:
                lst['items'] = [i for i in lst.get('items', [])
                                if selector_matches(sel, (i.get('metadata') or {}).get('labels') or {})]
            fsel = select_fields(res, request.query.get('fieldSelector'))
            if code == 200 and isinstance(lst, dict):
                if fsel:
                    lst['items'] = [i for i in lst.get('items', []) if fields_match(fsel, i)]
                lst.setdefault('metadata', {})['resourceVersion'] = str(self.rv)
            return aiohttp.web.json_response(lst, status=code)
        if m == 'GET' and res == 'pods' and sub == 'log' and info['name']:
            return await self.pod_log(info, request.query)
        if m == 'POST' and res == 'pods' and sub == 'eviction':
            return await self.evict(info, payload or {})
        if m == 'POST' and not info['name']:
            obj = payload or {}
            md = obj.setdefault('metadata', {})
            if info['namespace']:
                md['namespace'] = info['namespace']
            md['uid'] = str(uuid.uuid4())
            md['resourceVersion'] = self.next_rv()
            md['creationTimestamp'] = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
            if res in GENERATION:
                md['generation'] = 1
            if res in WITH_STATUS and res != 'pods':
                # The API server drops status on create for these kinds (their
                # controllers write it through /status). Pods keep it here:
                # no kubelet runs to report it.
                obj.pop('status', None)
            code, out = await self.call('POST', request.path, obj, ctype='application/json')
            if code == 200:
                code = 201
            return aiohttp.web.json_response(out, status=code)
        if m == 'PATCH':
            code, cur = await self.call('GET', self.obj_path(info))
            if code != 200:
                return aiohttp.web.json_response(cur, status=code)
            ctype = request.headers.get('content-type', '')
            if not isinstance(payload, dict):
                return status(415, 'UnsupportedMediaType', f'the body of a {ctype} patch must be an object here')
            want = (payload.get('metadata') or {}).get('resourceVersion')
            if want is not None and want != cur['metadata'].get('resourceVersion'):
                return status(409, 'Conflict', f'Operation cannot be fulfilled on {gr} "{info["name"]}": the object has been modified; please apply your changes to the latest version and try again',
                              {'name': info['name'], 'group': info['group'], 'kind': res})
            new = merge(cur, payload, 'strategic-merge-patch' in ctype)
            if res in WITH_STATUS:
                if sub == 'status':
                    new = dict(cur, status=new.get('status'))
                else:
                    new['status'] = cur.get('status')
                    if new.get('status') is None:
                        new.pop('status', None)
            new['metadata'] = dict(new.get('metadata') or {})
            for k in ('uid', 'creationTimestamp', 'namespace', 'name'):
                if k in cur['metadata']:
                    new['metadata'][k] = cur['metadata'][k]
            if new == cur:
                return aiohttp.web.json_response(cur, status=200)
            if res in GENERATION and sub != 'status' and new.get('spec') != cur.get('spec'):
                new['metadata']['generation'] = int(cur['metadata'].get('generation') or 1) + 1
            new['metadata']['resourceVersion'] = self.next_rv()
            code, out = await self.call('PATCH', self.obj_path(info), diff(cur, new))
            return aiohttp.web.json_response(out, status=code)
        if m == 'DELETE' and info['name']:
            code, cur = await self.call('GET', self.obj_path(info))
            if code != 200:
                return aiohttp.web.json_response(cur, status=code)
            pre = (payload or {}).get('preconditions') or {}
            err = self.precondition(pre, cur, gr, info)
            if err:
                return err
            code, out = await self.call('DELETE', self.obj_path(info))
            return aiohttp.web.json_response(out, status=code)
        if m == 'PUT':
            return status(405, 'MethodNotAllowed', 'PUT is not emulated')
        return await self.forward(request, body)

    def precondition(self, pre, cur, gr, info):
        md = cur.get('metadata') or {}
        for k, label in (('uid', 'UID'), ('resourceVersion', 'ResourceVersion')):
            if pre.get(k) is not None and pre[k] != md.get(k):
                return status(409, 'Conflict', f'Operation cannot be fulfilled on {gr} "{info["name"]}": Precondition failed: {label} in precondition: {pre[k]}, {label} in object meta: {md.get(k)}',
                              {'name': info['name'], 'group': info['group'], 'kind': info['resource']})
        return None

    async def pod_log(self, info, q):
        """GET pods/NAME/log as the API server and kubelet answer it
        (kubelet validateContainerLogStatus): the container must be named
        when the pod has several; previous=true needs the last state's
        terminated containerID; tailLines, then limitBytes, bound the text."""
        ns, name = info['namespace'], info['name']
        code, pod = await self.call('GET', f'/api/v1/namespaces/{ns}/pods/{name}')
        if code != 200:
            return status(404, 'NotFound', f'pods "{name}" not found', {'name': name, 'kind': 'pods'})
        spec = pod.get('spec') or {}
        names = [c.get('name') for c in spec.get('containers') or []]
        inits = [c.get('name') for c in spec.get('initContainers') or []]
        container = q.get('container') or ''
        if not container:
            if len(names) != 1:
                msg = f'a container name must be specified for pod {name}, choose one of: [{" ".join(names)}]'
                if inits:
                    msg += f' or one of the init containers: [{" ".join(inits)}]'
                return status(400, 'BadRequest', msg)
            container = names[0]
        if container not in names + inits:
            return status(400, 'BadRequest', f'container {container} is not valid for pod {name}')
        for k in ('tailLines', 'limitBytes'):
            v = q.get(k)
            if v is not None and not (v.isdigit() and (int(v) > 0 or k == 'tailLines')):
                return status(422, 'Invalid', f'PodLogOptions "{name}" is invalid: {k}: Invalid value: {v}')
        st = pod.get('status') or {}
        cs = next((c for c in (st.get('containerStatuses') or []) + (st.get('initContainerStatuses') or [])
                   if c.get('name') == container), None)
        if cs is None:
            return status(400, 'BadRequest', f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating')
        state = cs.get('state') or {}
        last = (cs.get('lastState') or {}).get('terminated') or {}
        if q.get('previous') in ('true', '1'):
            if not last.get('containerID'):
                return status(400, 'BadRequest', f'previous terminated container "{container}" in pod "{name}" not found')
            cid = last['containerID']
        elif 'running' in state:
            cid = cs.get('containerID') or ''
        elif 'terminated' in state:
            cid = state['terminated'].get('containerID') or last.get('containerID') or ''
            if not cid:
                return status(400, 'BadRequest', f'container "{container}" in pod "{name}" is terminated')
        elif last:
            cid = last.get('containerID') or ''
            if not cid:
                return status(400, 'BadRequest', f'container "{container}" in pod "{name}" is terminated')
        else:
            reason = (state.get('waiting') or {}).get('reason') or 'ContainerCreating'
            return status(400, 'BadRequest', f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        text = self.logs.get(cid, '')
        if q.get('tailLines') is not None:
            n = int(q['tailLines'])
            lines = text.splitlines(keepends=True)
            text = ''.join(lines[len(lines) - n:]) if n else ''
        data = text.encode()
        if q.get('limitBytes') is not None:
            data = data[:int(q['limitBytes'])]
        return aiohttp.web.Response(body=data, status=200, content_type='text/plain')

    async def evict(self, info, payload):
        ns, name = info['namespace'], info['name']
        pod_path = f'/api/v1/namespaces/{ns}/pods/{name}'
        code, pod = await self.call('GET', pod_path)
        if code != 200:
            return aiohttp.web.json_response(pod, status=code)
        pre = (payload.get('deleteOptions') or {}).get('preconditions') or {}
        err = self.precondition(pre, pod, 'pods', info)
        if err:
            return err
        labels = (pod.get('metadata') or {}).get('labels') or {}
        _, pdbs = await self.call('GET', f'/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets')
        for pdb in (pdbs.get('items', []) if isinstance(pdbs, dict) else []):
            ml = ((pdb.get('spec') or {}).get('selector') or {}).get('matchLabels') or {}
            if not all(labels.get(k) == v for k, v in ml.items()):
                continue
            st = pdb.get('status') or {}
            if int(st.get('disruptionsAllowed') or 0) < 1:
                pname = pdb['metadata']['name']
                return status(429, 'TooManyRequests', "Cannot evict pod as it would violate the pod's disruption budget.",
                              {'causes': [{'reason': 'DisruptionBudget',
                                           'message': f"The disruption budget {pname} needs {st.get('desiredHealthy', 0)} healthy pods and has {st.get('currentHealthy', 0)} currently"}]})
            st['disruptionsAllowed'] = int(st.get('disruptionsAllowed') or 0) - 1
            await self.call('PATCH', f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{pdb['metadata']['name']}",
                            {'status': st, 'metadata': {'resourceVersion': self.next_rv()}})
        await self.call('DELETE', pod_path)
        return aiohttp.web.json_response({'kind': 'Status', 'apiVersion': 'v1', 'metadata': {},
                                          'status': 'Success', 'code': 201}, status=201)


async def serve(port, rbac, log):
    emulator = kmock.KubernetesEmulator()
    # Built-ins from a recent K3s: pods, namespaces, events, apps/v1 (+scale), leases, PDBs, ...
    emulator.resources.load_bundled()
    emulator.resources[SPARK_APPS] = SPARK_INFO

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # kmock.Server (aiohttp's RawTestServer) hard-codes aiohttp's 60s graceful shutdown,
    # so an open watch would delay SIGTERM by up to 60s. Serve the handler with plain aiohttp.
    async with emulator:
        inner = aiohttp.web.ServerRunner(
            aiohttp.web.Server(emulator, handler_cancellation=True), shutdown_timeout=0.5)
        await inner.setup()
        facade = Facade(None, Rbac(rbac[0], rbac[1]) if rbac[0] else None, log)
        outer = aiohttp.web.ServerRunner(
            aiohttp.web.Server(facade.handle, handler_cancellation=True), shutdown_timeout=0.5)
        await outer.setup()
        try:
            site = aiohttp.web.TCPSite(inner, host='127.0.0.1', port=0)
            await site.start()
            facade.inner = f'http://127.0.0.1:{inner.addresses[0][1]}'
            facade.http = aiohttp.ClientSession()
            site = aiohttp.web.TCPSite(outer, host='127.0.0.1', port=port)
            await site.start()
            _, actual_port = outer.addresses[0][:2]
            print(f'KMOCK_URL=http://127.0.0.1:{actual_port}', flush=True)
            await stop.wait()
        finally:
            if facade.http:
                await facade.http.close()
            await outer.cleanup()
            await inner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, default=0, help='TCP port on 127.0.0.1 (0 = random)')
    parser.add_argument('--rbac', help='RBAC objects (deploy/k8s/rbac.yaml) to authorize the agent with')
    parser.add_argument('--user', default='system:serviceaccount:remediate:remediate')
    parser.add_argument('--log', help='append every agent request as a JSON line')
    args = parser.parse_args()
    asyncio.run(serve(args.port, (args.rbac, args.user), args.log))
    sys.exit(0)


if __name__ == '__main__':
    main()
