#!/usr/bin/env bash
# Create .venv-kvpress: kvpress pins transformers < 5.3, so it gets its own environment beside headwise's .venv.
# bench/kv_cache.py --kvpress calls bench/kvpress/run_presses.py with this environment's python.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv-kvpress/bin/python ] || python3 -m venv .venv-kvpress
.venv-kvpress/bin/pip install -q torch==2.13.0 "transformers>=4.56,<5.3" kvpress==0.5.5 gguf
.venv-kvpress/bin/python -c "import kvpress; print('kvpress', kvpress.__version__ if hasattr(kvpress, '__version__') else 'ready')"
