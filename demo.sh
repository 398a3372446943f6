#!/usr/bin/env bash
# Sets up what the demo needs on a fresh Debian machine, then plays the RFC's story on real images.
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/setup && python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m snapledger.adapters.cli.demo "$@"
