"""What every benchmark shares: where results go, the command that made them (quoted, so it can be pasted
back), partial reruns that keep the rows not redone, and writers for JSON, markdown and plots."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATA = ROOT / "bench" / "data"


def results_dir(model: str, *sub: str) -> Path:
    """bench/results/<model>/<sub...>, created."""
    path = RESULTS.joinpath(model.replace("/", "_"), *sub)
    path.mkdir(parents=True, exist_ok=True)
    return path


def command() -> str:
    """How this run was started, as a shell line: `python -m bench.<script> <args>`."""
    script = Path(sys.argv[0]).stem
    return shlex.join(["python", "-m", f"bench.{script}", *sys.argv[1:]])


def merge_rows(path: Path, rows: list[dict], key: Callable[[dict], tuple]) -> list[dict]:
    """A partial rerun's rows plus the saved rows of `path` it did not redo (each keeps its own command)."""
    if not path.is_file():
        return rows
    old = json.loads(path.read_text())
    fresh = {key(r) for r in rows}
    kept = [{"command": old.get("command"), **r} for r in old["rows"] if key(r) not in fresh]
    return kept + rows


def write_json(path: Path, doc: dict) -> Path:
    """Write `doc` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path


def write_markdown(path: Path, heading: str, about: str, table: list[str]) -> str:
    """Write `# heading`, the paragraph `about` and a markdown table; print and return the text."""
    text = "\n".join([f"# {heading}", "", about, "", *table]) + "\n"
    path.write_text(text)
    sys.stdout.write(text)
    return text


def accuracy(model, tokenizer, tests: list, desc: str = "tests") -> float:
    """Share of needle tests answered correctly with the full cache (under whatever hooks are attached)."""
    from headwise.eval.niah import evaluate

    outcomes = evaluate(model, tokenizer, tests, desc=desc)
    return sum(o.correct for o in outcomes) / len(outcomes)
