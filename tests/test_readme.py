"""The README's Python quick start runs as written on the shipped model, and prints what its comments say."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_quick_start_runs_as_written(tmp_path, monkeypatch):
    block = re.search(r"## Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)  # it saves smol.json and report.html
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    summary, unmasked, masked, ratio, ranking, answer = lines[0], lines[1], lines[2], lines[3], lines[4], lines[5]
    assert "top: L18H7" in summary or "top: L17H3" in summary, summary
    assert float(unmasked) == 1.0 and float(masked) == 0.0, (unmasked, masked)
    assert 0.25 < float(ratio) <= 0.3, ratio
    assert ranking.startswith("[('bees'"), ranking
    assert "flour barrel" in answer.split("[")[0].lower() and "flour barrel." in answer.split("[")[1], answer
    assert (tmp_path / "smol.json").is_file()
    page = (tmp_path / "report.html").read_text()
    assert page.count('<rect class="cell"') == 270 and "The ship&#39;s cook hid the brass key" in page
