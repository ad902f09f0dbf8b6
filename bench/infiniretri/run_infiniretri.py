"""Answer exported needle tests with InfiniRetri (PyPI infini-retri 0.0.3), in .venv-infiniretri.

    .venv-infiniretri/bin/python bench/infiniretri/run_infiniretri.py TESTS.json ANSWERS.json

TESTS.json (written by bench/read_long.py --infiniretri) gives the model's directory and GGUF file,
the dtype, InfiniRetri's settings and a list of {context, question}; ANSWERS.json receives one
{response, seconds} per test. Standalone on purpose: headwise is not installed in that environment.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from infini_retri import InfiniRetri
from transformers import AutoModelForCausalLM, AutoTokenizer

# headwise's wording, with the blank lines InfiniRetri needs around the context and the question.
PROMPT = (
    "Read the text below, then answer the question that follows it.\n\n{context}"
    "\n\nQuestion:\n\n{question}\n\nAnswer in one short sentence."
)


def main() -> None:
    """Load the model with eager attention (InfiniRetri reads full attention matrices) and answer each test."""
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    where, gguf = spec["model_dir"], spec["gguf_file"]
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(
        where, gguf_file=gguf, dtype=getattr(torch, spec["dtype"]), attn_implementation="eager"
    ).eval()
    reader = InfiniRetri(model, tokenizer, **spec["settings"])
    answers = []
    for number, test in enumerate(spec["tests"], 1):
        began = time.perf_counter()
        response = reader.generate(
            context=test["context"],
            question=test["question"],
            prompt=PROMPT,
            max_new_tokens=spec["max_new_tokens"],
        )
        answers.append({"response": response.strip(), "seconds": round(time.perf_counter() - began, 2)})
        sys.stderr.write(f"infini-retri {number}/{len(spec['tests'])}: {answers[-1]}\n")
    open(sys.argv[2], "w", encoding="utf-8").write(json.dumps(answers, indent=1))


if __name__ == "__main__":
    main()
