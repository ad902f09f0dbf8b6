#!/usr/bin/env bash
# Create .venv-infiniretri for the InfiniRetri side of bench/read_long.py --infiniretri: the PyPI package
# infini-retri 0.0.3 (it also imports scipy, seaborn and tiktoken without declaring them) beside the same torch and transformers as headwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv-infiniretri/bin/python ] || python3 -m venv .venv-infiniretri
.venv-infiniretri/bin/pip install -q torch==2.13.0 "transformers==$(.venv/bin/python -c 'import transformers; print(transformers.__version__)')" \
    gguf accelerate scipy seaborn tiktoken infini-retri==0.0.3
.venv-infiniretri/bin/python -c "import infini_retri; print('infini-retri ready')"
