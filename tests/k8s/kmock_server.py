#!/usr/bin/env python3
"""Standalone kmock Kubernetes API emulator for the Rust integration tests.

Usage: python3 tests/k8s/kmock_server.py [--port 0]

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
import signal
import sys

import aiohttp.web
import kmock

# Not in kmock's bundled resources.json.gz (built-ins only): register the CRD by hand.
SPARK_APPS = 'sparkoperator.k8s.io/v1beta2/sparkapplications'
SPARK_INFO = kmock.ResourceInfo(
    kind='SparkApplication', singular='sparkapplication', namespaced=True,
    shortnames={'sparkapp'}, subresources={'status'},
    verbs={'create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'},
)


async def serve(port: int) -> None:
    emulator = kmock.KubernetesEmulator()
    # Built-ins from a recent K3s: pods, namespaces, events, apps/v1 (+scale), leases, ...
    emulator.resources.load_bundled()
    emulator.resources[SPARK_APPS] = SPARK_INFO

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # kmock.Server (aiohttp's RawTestServer) hard-codes aiohttp's 60s graceful shutdown,
    # so an open watch would delay SIGTERM by up to 60s. Serve the handler with plain aiohttp.
    async with emulator:
        runner = aiohttp.web.ServerRunner(
            aiohttp.web.Server(emulator, handler_cancellation=True), shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(runner, host='127.0.0.1', port=port)
            await site.start()
            _, actual_port = runner.addresses[0][:2]
            print(f'KMOCK_URL=http://127.0.0.1:{actual_port}', flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, default=0, help='TCP port on 127.0.0.1 (0 = random)')
    args = parser.parse_args()
    asyncio.run(serve(args.port))
    sys.exit(0)


if __name__ == '__main__':
    main()
