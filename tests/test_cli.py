"""The command line: bad input ends with one clear line and exit code 2, before any slow work where possible."""

import json

import pytest
from typer.testing import CliRunner

from headwise.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["profile", "--model", "smollm-135"], "unknown model"),
        (["profile", "--model", "/nonexistent/model.gguf"], "GGUF file not found"),
        (["profile", "--haystack", "/nonexistent/book.txt"], "neither a shipped book"),
        (["profile", "--lengths", "500,abc"], "comma-separated numbers"),
        (["niah", "--depths", "0.5,2"], "outside [0, 1]"),
        (["ablate", "/nonexistent/map.json"], "cannot read head map"),
        (["ablate", "map.tsv"], "pass --model"),
        (["ablate", "x.json", "--mode", "gentle"], "--mode"),
        (["niah", "--needles", "0"], "choose between 1 and"),
        (["niah", "--cache", "bogus"], "--cache must be"),
        (["profile", "--score", "speed"], "--score must be"),
        (["rank", "--query", "q", "--docs", "/nonexistent/docs.jsonl"], "cannot read documents"),
        (["bench", "rank", "--data", "/nonexistent"], "not a BEIR dataset"),
    ],
)
def test_bad_input_fails_fast_and_clearly(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert message in result.output


def test_malformed_head_map_is_refused(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"format": "headwise.headmap", "version": 1, "model": "x"}))
    result = run("ablate", str(tmp_path / "bad.json"))
    assert result.exit_code == 2 and "malformed" in result.output


def test_length_beyond_window_and_k_beyond_heads(tmp_path, smol):
    result = run("niah", "--lengths", "9000")
    assert result.exit_code == 2 and "exceeds smollm2-135m's window of 8192" in result.output
    from headwise.headmap import shipped_headmap

    path = shipped_headmap("smollm2-135m").save(tmp_path / "map.json")
    result = run("ablate", str(path), "--k", "300")
    assert result.exit_code == 2 and "choose 1..270" in result.output
