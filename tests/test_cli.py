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
        (["niah", "--needles", "0"], "at least 1 needle"),
        (["niah", "--needles", "999"], "choose between 1 and"),
        (["niah", "--cache", "bogus"], "unknown cache"),
        (["profile", "--score", "speed"], "--score must be"),
        (["profile", "--score", "gates", "--names", "-1"], "--names must be 0 or more"),
        (["rank", "--query", "q", "--docs", "/nonexistent/docs.jsonl"], "cannot read documents"),
        (["bench", "rank", "--data", "/nonexistent"], "not a BEIR dataset"),
        (["read", "--file", "/nonexistent/book.txt", "--question", "q"], "cannot read"),
        (["read", "--file", "pyproject.toml", "--question", " "], "--question is empty"),
        (["niah", "--reader", "magic"], "--reader must be"),
        (["niah", "--reader", "headwise", "--cache", "window"], "cannot be combined"),
        (["niah", "--cache", "headwise", "--budget", "1.5"], "budget is a share"),
        (["niah", "--reader", "headwise", "--focus", "2"], "focus must be"),
        (["read", "--file", "pyproject.toml", "--question", "q", "--unit", "page"], "unit must be"),
        (["ablate", "--draws", "0"], "--draws must be at least 1"),
        (["profile", "--dtype", "int3"], "unknown dtype"),
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
    from headwise.core.shipped import shipped_headmap

    path = shipped_headmap("smollm2-135m").save(tmp_path / "map.json")
    result = run("ablate", str(path), "--k", "300")
    assert result.exit_code == 2 and "choose 1..270" in result.output


def test_reader_goes_beyond_the_window_from_the_command_line(tmp_path, book):
    result = run(
        "niah", "--reader", "headwise", "--lengths", "9000", "--depths", "0.5", "--needles", "1",
        "--chunk", "2048", "--keep", "128", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["settings"]["reader"]["keep"] == 128 and doc["grid"]["lengths"] == [9000]
    assert doc["outcomes"][0]["kept_needle"] and doc["correct"] == 1, doc["outcomes"]
    cut = book.text.index(". ", 6000) + 1
    story = book.text[:cut] + " The ferry leaves the harbour at seven." + book.text[cut : cut + 6000]
    (tmp_path / "story.txt").write_text(story)
    result = run(
        "read", "--file", str(tmp_path / "story.txt"), "--question", "When does the ferry leave?", "--json",
        "--out", str(tmp_path / "answer.json"), "--html", str(tmp_path / "answer.html"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout[result.stdout.index("{") :])
    given = [p["text"] for p in answer["passages"] if p["given"]]
    assert any("ferry leaves the harbour" in q for q in given) and "seven" in answer["answer"].lower()
    saved = json.loads((tmp_path / "answer.json").read_text())
    assert saved["format"] == "headwise.answer" and saved["source"] == story and saved["answer"] == answer["answer"]
    assert "When does the ferry leave?" in (tmp_path / "answer.html").read_text()
    result = run("report", str(tmp_path), str(tmp_path / "answer.json"), "-o", str(tmp_path / "both.html"))
    assert result.exit_code == 0 and "wrote" in result.output, result.output  # a run folder and a reader answer


def test_niah_headwise_cache_defaults_to_the_shipped_gate_map(tmp_path, smol):
    result = run(
        "niah", "--cache", "headwise", "--budget", "0.3", "--lengths", "1200", "--depths", "0.5", "--needles", "1",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["settings"]["cache_ranking"]["kind"] == "gates" and doc["settings"]["cache_ranking"]["tie_break"]
    outcome = doc["outcomes"][0]
    assert outcome["kv_bytes"] <= 0.3 * outcome["full_kv_bytes"] and doc["correct"] == 1, doc["outcomes"]


def test_profile_writes_its_map_and_report_page(tmp_path, smol):
    result = run(
        "profile", "--lengths", "400", "--depths", "0.5", "--needles", "2", "--out", str(tmp_path / "map.json"),
        "--html", str(tmp_path / "map.html"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from headwise.core.headmap import HeadMap

    best = HeadMap.load(tmp_path / "map.json").top(1)[0]
    page = (tmp_path / "map.html").read_text()
    assert page.count('<rect class="cell"') == 270 and f"<td>L{best[0]}H{best[1]}</td>" in page


def test_help_is_instant_because_no_torch_is_imported():
    import subprocess
    import sys

    code = "import sys, headwise.cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert run("--help").exit_code == 0 and "ablate" in run("--help").output


def test_ablate_names_the_masked_heads_and_keeps_its_results(tmp_path, smol):
    result = run(
        "ablate", "--lengths", "500", "--depths", "0.5", "--needles", "2", "--draws", "1", "--top", "14",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "top heads: L18H7" in result.output and "draw 1:" in result.output
    doc = json.loads((tmp_path / "ablation.json").read_text())
    [row] = doc["results"]
    assert row["mode"] == "uniform" and row["count"] == 14 and row["complete"]
    assert row["baseline"] == 1.0 and row["top"] < row["baseline"], row
    assert (tmp_path / "ablation.png").stat().st_size > 10_000
