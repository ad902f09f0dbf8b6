"""The HTML report: real results of the default model in, one self-contained page out, checked as text and in
headless Chromium (skipped, with the reason, where no Chromium or Playwright is installed)."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from headwise.apps.config import ReaderConfig
from headwise.apps.reader import read
from headwise.cli import app
from headwise.core.shipped import shipped_headmap
from headwise.errors import HeadwiseError
from headwise.eval.ablate import ablate
from headwise.eval.grids import NeedleGrid
from headwise.eval.niah import run_niah
from headwise.eval.tasks import needle_tests
from headwise.reports import report
from headwise.reports.views import headmap_view, reader_view

NEEDLE = "The lighthouse keeper's parrot is called Admiral Pepper."
QUESTION = "What is the lighthouse keeper's parrot called?"


@pytest.fixture(scope="module")
def results(smol, book, tmp_path_factory):
    """A head map, an ablation, a needle run and a reader answer, all made by the real model, and a report of them."""
    model, tok = smol
    folder = tmp_path_factory.mktemp("report")
    headmap = shipped_headmap("smollm2-135m")
    cut = book.text.index(". ", 30000) + 1
    text = book.text[20000:cut] + " " + NEEDLE + book.text[cut : cut + 12000]
    answer = read(model, tok, text, QUESTION, headmap, ReaderConfig(chunk=512, keep=128), progress=False)
    tests = needle_tests(tok, NeedleGrid((400, 600), (0.2, 0.8), needles=1, held_out=True))
    niah = run_niah(model, tok, tests, progress=False)
    masked = ablate(model, tok, headmap, tests[:2], top=14, draws=1, modes=("uniform",), progress=False)
    answer.save(folder / "answer.json")
    (folder / "niah").mkdir()
    niah.save(folder / "niah" / "results.json")
    page = report([headmap, folder / "niah", masked, folder / "answer.json"], folder / "report.html")
    return {"headmap": headmap, "answer": answer, "niah": niah, "text": text, "page": page, "folder": folder}


def test_the_report_is_one_self_contained_page_of_every_result(results):
    html = results["page"].read_text()
    for section in ('class="view headmap"', 'class="view niah"', 'class="view ablation"', 'class="view answer"'):
        assert section in html
    assert html.count('<rect class="cell"') == 30 * 9  # every layer x head of SmolLM2
    for external in ("http://", "https://", "<link", "@import", "<script src"):
        assert external not in html, external
    assert results["page"].stat().st_size < 2e6


def test_the_reader_view_marks_the_passage_with_the_needle_and_collapses_the_rest(results):
    answer, text = results["answer"], results["text"]
    assert "admiral pepper" in answer.text.lower(), answer.text
    view = reader_view(answer.to_dict())
    given = [s for s in view["segments"] if s["kind"] == "passage" and s["given"]]
    assert any(NEEDLE in s["text"] for s in given), [s["text"] for s in given]
    shown = "".join(s["text"] for s in view["segments"] if s["kind"] != "gap")
    assert len(shown) < len(text) / 2  # most of the input is collapsed
    rebuilt = iter(view["gaps"])
    assert "".join(s["text"] if s["kind"] != "gap" else next(rebuilt) for s in view["segments"]) == text


def test_the_budget_control_shows_what_the_cache_keeps(smol):
    from headwise.core.cache import HeadwiseCache

    model, _ = smol
    ranking = shipped_headmap("smollm2-135m", "gates")
    view = headmap_view(ranking, context_length=4096)
    plan = next(p for p in view["plans"] if p["budget"] == 0.3)
    cache = HeadwiseCache.from_headmap(model, ranking, budget=0.3, context_length=4096)
    assert plan["full"] == [[l, k] for l, heads in enumerate(cache.full_heads) for k in heads]
    assert plan["window"] == cache.window and 0 < plan["count"] < plan["total"] == 90
    gemma = headmap_view(shipped_headmap("gemma3-270m"), context_length=32768)
    assert gemma["total"] == 3 and gemma["sliding"] == [l for l in range(18) if l % 6 != 5]
    assert all(l % 6 == 5 for p in gemma["plans"] for l, _ in p.get("full", []))  # only global layers are chosen


def test_passages_at_the_edges_of_the_input_are_shown_whole():
    source = "First words here. " + "Middle sentence. " * 100 + "The last words."
    edges = [(0, 17, 1.0, True), (len(source) - 15, len(source), 0.5, False)]
    passages = [{"start": a, "end": b, "score": s, "given": g} for a, b, s, g in edges]
    view = reader_view({"source": source, "passages": passages})
    kept = [s["text"] for s in view["segments"] if s["kind"] == "passage"]
    assert kept == ["First words here.", "The last words."] and view["segments"][-1]["kind"] == "passage"
    gaps = iter(view["gaps"])
    assert "".join(s["text"] if s["kind"] != "gap" else next(gaps) for s in view["segments"]) == source


def test_user_text_is_escaped(results, tmp_path):
    doc = results["answer"].to_dict()
    doc["question"] = "<script>alert('q')</script>"
    doc["answer"] = "</script><img src=x onerror=alert(1)>"
    html = report([doc], tmp_path / "r.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#39;q&#39;)&lt;/script&gt;" in html


def test_anything_but_a_headwise_result_is_refused_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "empty").mkdir()
    for bad in ("notes.txt", "other.json", "empty", "missing.json"):
        result = CliRunner().invoke(app, ["report", str(tmp_path / bad), "-o", str(tmp_path / "r.html")])
        assert result.exit_code == 2 and result.output.startswith("error: ") and bad in result.output, result.output
    with pytest.raises(HeadwiseError, match="nothing to report"):
        report([], tmp_path / "r.html")


def chromium() -> str | None:
    """The Chromium to test with: $HEADWISE_CHROMIUM, or Debian's chromium on the PATH."""
    return os.environ.get("HEADWISE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_report_works_in_a_real_browser(results):
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
    )
    if chromium() is None:
        pytest.skip("no Chromium: apt-get install chromium, or set HEADWISE_CHROMIUM")
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(results["page"].as_uri())
        heatmap = page.locator("section.headmap rect.cell")
        assert heatmap.count() == 270
        top_layer, top_head = results["headmap"].top(1)[0]
        page.hover(f'section.headmap rect.cell[data-layer="{top_layer}"][data-head="{top_head}"]')
        tip = page.locator("#tip")
        assert tip.is_visible() and f"layer {top_layer}, head {top_head}" in tip.inner_text()
        assert f"score {results['headmap'].scores[top_layer, top_head]:.4f}".rstrip("0") in tip.inner_text()
        kept = page.locator("section.headmap rect.cell.kept").count()
        assert 0 < kept < 270  # 30%: some KV heads full, most windowed
        page.locator("section.headmap input.budget").fill("19")  # 100%: every KV head full
        assert page.locator("section.headmap rect.cell.kept").count() == 270
        page.locator("section.niah td.cell").first.click()
        detail = page.locator("section.niah .detail").inner_text()
        assert "needle:" in detail and "answer:" in detail and "expected:" in detail
        marks = page.locator("section.answer mark.passage.given").all_inner_texts()
        assert any(NEEDLE in m for m in marks), marks
        gaps = page.locator("section.answer button.gap").count()
        shown = len(page.locator("section.answer .text").inner_text())
        page.locator("section.answer button.gap").first.click()
        assert page.locator("section.answer button.gap").count() == gaps - 1
        assert len(page.locator("section.answer .text").inner_text()) > shown  # the collapsed text is back
        page.screenshot(path=str(results["folder"] / "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
