"""The HTML report on real runs of the shipped model: one page with every view (the shipped head map, an
ablation, a needle grid through the head-wise cache, and a reader answer over a 128K-token book), a
screenshot of each view, and how fast the page opens and scrolls in headless Chromium.

    python -m bench.report                      # the runs, the page, screenshots and timings (~15 min on 2 cores)
    python -m bench.report --reuse              # page, screenshots and timings from the runs saved before

The runs use each command's defaults: `headwise ablate` (12 held-out tests, 14 heads, uniform, 3 draws),
`headwise niah --cache headwise --budget 0.3`, and `headwise read` (bfloat16) on 128,000 tokens of
Moby-Dick with a held-out needle at half depth. Writes bench/results/<model>/report/ (the runs, report.html,
timing.json, timing.md, screenshots) and docs/images/report-<view>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench.common import ROOT, command, results_dir, write_json

OPENS = 5  # page loads timed; the median is reported
VIEWS = ("headmap", "ablation", "niah", "answer")
MAX_SHOT_HEIGHT = 1100  # px: the reader view is cut after its passages and the first stretches of text


def make_runs(model_name: str, folder: Path) -> None:
    """Run ablate, niah and read as their commands would, saving each result beside the report."""
    from dataclasses import asdict

    import headwise as hw
    from headwise.core.policy import CachePolicy
    from headwise.eval.ablate import ablation_document
    from headwise.eval.grids import ABLATE_GRID, NIAH_GRID
    from headwise.eval.tasks import context_text, load_needles, make_tests, pick_needles

    model, tok = hw.load_model(model_name)
    headmap = hw.shipped_headmap(model_name)
    tests = hw.needle_tests(tok, ABLATE_GRID)
    masked = hw.ablate(model, tok, headmap, tests, top=14, draws=3, modes=("uniform",))
    about = {"headmap": "retrieval", "model": model_name, "tests": len(tests), "grid": asdict(ABLATE_GRID)}
    write_json(folder / "ablation.json", ablation_document(masked, **about))
    niah = hw.run_niah(model, tok, hw.needle_tests(tok, NIAH_GRID), cache=CachePolicy("headwise", 0.3))
    niah.save(folder / "niah.json")

    model, tok = hw.load_model(model_name, dtype="bfloat16")
    needle = pick_needles(load_needles(), 1, held_out=True)[0]
    [test] = make_tests(tok, hw.load_haystack("moby-dick"), [needle], [128_000], [0.5])
    answer = hw.read(model, tok, context_text(tok, test), needle.question, headmap)
    answer.save(folder / "answer-128k.json")
    sys.stdout.write(f"128K reader: {answer.text!r} (expected {needle.answer!r}), {answer.seconds:.0f} s\n")


def timings(page_path: Path, browser) -> dict:
    """Median time to open the page (navigation to the load event), then to scroll it top to bottom, with the
    collapsed text closed and with all of it opened."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # one screen per animation frame, so the time is frames x frame time: its per-screen mean shows jank
    scroll = """async () => {
        const start = performance.now(), step = window.innerHeight;
        let screens = 0;
        for (let y = 0; y < document.body.scrollHeight; y += step, screens++) {
            window.scrollTo(0, y);
            await new Promise((r) => requestAnimationFrame(r));
        }
        return [performance.now() - start, screens]; }"""
    opens, scrolls = [], []
    for _ in range(OPENS):
        began = time.perf_counter()
        page.goto(page_path.as_uri(), wait_until="load")
        opens.append(time.perf_counter() - began)
        scrolls.append(page.evaluate(scroll))
    began = time.perf_counter()
    page.evaluate("() => document.querySelectorAll('button.gap').forEach((b) => b.click())")
    opened = time.perf_counter() - began
    all_ms, all_screens = page.evaluate(scroll)
    page.close()
    ms, screens = statistics.median(s[0] for s in scrolls), scrolls[0][1]
    return {
        "open_s": round(statistics.median(opens), 3),
        "open_s_max": round(max(opens), 3),
        "scroll_s": round(ms / 1000, 3),
        "scroll_screens": screens,
        "scroll_ms_per_screen": round(ms / screens, 1),
        "open_all_text_s": round(opened, 3),
        "scroll_all_text_s": round(all_ms / 1000, 3),
        "scroll_all_text_screens": all_screens,
        "scroll_all_text_ms_per_screen": round(all_ms / all_screens, 1),
    }


def screenshots(page_path: Path, browser, best: tuple[int, int], out: list[Path]) -> list[str]:
    """One picture per view, in the state a person would look at it: hovering the best head, a needle cell
    opened (a missed one where there is one), the reader's answer and passages."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
    page.goto(page_path.as_uri(), wait_until="load")
    page.add_style_tag(content="header { position: static; }")  # a sticky header would cover element shots
    written = []
    for view in VIEWS:
        section = page.locator(f"section.{view}").first
        height = section.bounding_box()["height"]
        height = min(height, MAX_SHOT_HEIGHT) if view == "answer" else height
        page.set_viewport_size({"width": 1280, "height": int(height) + 20})
        section.evaluate("(e) => e.scrollIntoView()")
        if view == "headmap":
            page.hover(f'section.headmap rect.cell[data-layer="{best[0]}"][data-head="{best[1]}"]')
        if view == "niah":
            cells = page.locator("section.niah td.cell")
            missed = [i for i in range(cells.count()) if cells.nth(i).inner_text().strip() != "100%"]
            cells.nth(missed[0] if missed else 0).click()
        box = section.bounding_box()
        for folder in out:
            page.screenshot(path=str(folder / f"report-{view}.png"), clip={**box, "height": height})
        written.append(f"report-{view}.png")
    page.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reuse", action="store_true", help="use the runs saved before instead of rerunning them")
    args = parser.parse_args()
    folder = results_dir(args.model, "report")
    if not args.reuse:
        make_runs(args.model, folder)
    from playwright.sync_api import sync_playwright

    from headwise.core.shipped import shipped_headmap
    from headwise.reports import report

    headmap = shipped_headmap(args.model)
    runs = [folder.relative_to(ROOT) / f for f in ("ablation.json", "niah.json", "answer-128k.json")]
    page_path = report([headmap, *runs], folder / "report.html")
    chromium = os.environ.get("HEADWISE_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no Chromium: apt-get install chromium, or set HEADWISE_CHROMIUM")
    images = ROOT / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        timing = timings(page_path, browser)
        shots = screenshots(page_path, browser, headmap.top(1)[0], [folder, images])
        browser.close()
    doc = {
        "command": command(),
        "page": str(page_path.relative_to(ROOT)),
        "page_mb": round(page_path.stat().st_size / 1e6, 2),
        "reader_input_tokens": json.loads(runs[-1].read_text())["input_tokens"],
        "chromium": chromium,
        **timing,
        "screenshots": shots,
    }
    write_json(folder / "timing.json", doc)
    lines = [
        "# The HTML report in headless Chromium",
        "",
        f"`{doc['command']}`: one page with the shipped head map, an ablation, a needle grid and a reader answer over "
        f"{doc['reader_input_tokens']:,} tokens; {doc['page_mb']} MB. Median of {OPENS} loads.",
        "",
        "Scrolling moves one screen per animation frame, so its time is screens x frame time; about 16.7 ms a "
        "screen is the display's 60 Hz, i.e. no frame dropped.",
        "",
        "| measure | seconds |",
        "|---|---:|",
        f"| open (navigation to load event) | {doc['open_s']} (max {doc['open_s_max']}) |",
        f"| scroll top to bottom, collapsed text closed ({doc['scroll_screens']} screens, "
        f"{doc['scroll_ms_per_screen']} ms each) | {doc['scroll_s']} |",
        f"| open every collapsed stretch (the whole book in the page) | {doc['open_all_text_s']} |",
        f"| then scroll top to bottom ({doc['scroll_all_text_screens']} screens, "
        f"{doc['scroll_all_text_ms_per_screen']} ms each) | {doc['scroll_all_text_s']} |",
    ]
    (folder / "timing.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
