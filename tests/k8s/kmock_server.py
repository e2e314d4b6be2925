#!/usr/bin/env python3
"""Standalone kmock Kubernetes API emulator for the Rust integration tests.

Usage: python3 tests/k8s/kmock_server.py [--port 0]

OBSERVED BEHAVIOUR: (filled in below)
"""
import argparse
import asyncio
import signal
import sys

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

    async with emulator, kmock.Server(emulator, host='127.0.0.1', port=port) as server:
        print(f'KMOCK_URL=http://127.0.0.1:{server.port}', flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, default=0, help='TCP port on 127.0.0.1 (0 = random)')
    args = parser.parse_args()
    asyncio.run(serve(args.port))
    sys.exit(0)


if __name__ == '__main__':
    main()
