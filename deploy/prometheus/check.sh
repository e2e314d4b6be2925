#!/usr/bin/env bash
# Checks the alert rules and runs their unit tests with promtool.
set -euo pipefail
cd "$(dirname "$0")"
command -v promtool >/dev/null 2>&1 || { echo "promtool not found: install it with 'apt-get install prometheus'" >&2; exit 1; }
promtool check rules remediate-rules.yaml
promtool test rules remediate-rules.test.yaml
