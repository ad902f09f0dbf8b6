"""RULER: samples made by NVIDIA's generators with the model's tokenizer, scored by RULER's own metrics, and
answered end to end with caches derived from one prefill."""

import copy
import html
import json

import pytest
import torch
from typer.testing import CliRunner

from headwise.apps.config import ReaderConfig
from headwise.cli import app
from headwise.core.caches import build_cache
from headwise.core.generate import greedy
from headwise.core.policy import CachePolicy
from headwise.core.prompts import encode
from headwise.core.shipped import cache_headmap, shipped_headmap
from headwise.eval import ruler_data
from headwise.eval.ruler import READER_DEVIATIONS, deviations, run_ruler, score
from headwise.reports import report

pytest.importorskip("long_context_eval", reason="RULER's generators: ./scripts/setup.sh installs them")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """Samples go to a fresh cache folder, so that the generators really run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEADWISE_CACHE", str(tmp_path_factory.mktemp("headwise-cache")))
        yield


def test_split_sentences_keeps_abbreviations_and_initials_inside():
    text = 'Dr. Smith met J. R. Tolkien at 5 p.m. in St. Ives. "Really?" she asked. Then 3 more came.'
    assert ruler_data.split_sentences(text) == [
        "Dr. Smith met J. R. Tolkien at 5 p.m. in St. Ives.",
        '"Really?" she asked.',
        "Then 3 more came.",
    ]


def test_a_1k_sample_scores_100_right_and_0_wrong_with_rulers_metric(smol):
    _, tok = smol
    samples = ruler_data.generate(tok, "niah_multivalue", 1024, 2, 7, "test-smollm2")
    assert len(samples) == 2
    for s in samples:
        assert s.tokens + s.max_new_tokens <= 1024
        assert s.prompt.startswith("<|im_start|>system")  # the model's chat template around RULER's text
        assert s.prompt.endswith("mentioned in the provided text are")  # RULER's answer prefix...
        assert "<|im_start|>assistant\n The special magic numbers for" in s.prompt  # ...opens the assistant turn
        context = s.prompt[s.context[0] : s.context[1]]
        assert len(s.outputs) == 4 and all(v in context for v in s.outputs)  # the needles are in the context
        assert "What are all the special magic numbers" not in context
        assert score(s.task, " ".join(s.outputs), s.outputs) == 100
        assert score(s.task, "I do not know.", s.outputs) == 0
        assert score(s.task, s.outputs[0], s.outputs) == 25  # string_match_all: one of four values
    again = ruler_data.generate(tok, "niah_multivalue", 1024, 2, 7, "test-smollm2")
    assert again == samples  # seeded and cached
    assert ruler_data.generate(tok, "niah_multivalue", 1024, 2, 8, "test-smollm2") != samples


def test_a_base_model_without_a_chat_template_gets_a_plain_prompt_and_its_result_file_says_so(smol):
    base = copy.deepcopy(smol[1])
    base.chat_template = None  # as Gemma 3 270M's GGUF, a base model
    (sample,) = ruler_data.generate(base, "niah_single_1", 1024, 1, 7, "test-base")
    assert sample.prompt.startswith(base.bos_token + "A special magic number is hidden")  # no system turn
    assert "\nAnswer: The special magic number for" in sample.prompt
    assert deviations(base, reader=False)["prompt"].startswith("no chat template")
    assert deviations(smol[1], reader=False)["prompt"].startswith("the model's chat template")
    assert "no chat template" in deviations(base, reader=True)["prompt"]


def test_two_samples_end_to_end_with_caches_from_one_prefill(smol, tmp_path):
    model, tok = smol
    caches = [CachePolicy("full"), CachePolicy("headwise", 0.3)]
    result = run_ruler(model, tok, "niah_single_1", (1024,), 2, caches, seed=3, progress=False)
    full = [o for o in result.outcomes if o.method == "full"]
    assert [o.score for o in full] == [100.0, 100.0]  # the model finds the number at 1K
    assert all(o.outputs[0] in o.prediction for o in full)
    headwise = [o for o in result.outcomes if o.method == "headwise-30%"]
    assert all(o.kv_bytes < 0.4 * o.full_kv_bytes for o in headwise)  # memory really shrank
    # A cache derived from the shared prefill answers as the same cache filled by its own prefill does.
    sample = ruler_data.generate(tok, "niah_single_1", 1024, 2, 3, "smollm2-135m")[0]
    ids = torch.tensor(encode(tok, sample.prompt))
    ranking = cache_headmap("smollm2-135m")  # what run_ruler ranks by when given no map
    own = greedy(model, tok, ids, sample.max_new_tokens, cache=build_cache(model, caches[1], len(ids), ranking))
    assert headwise[0].prediction == own
    # Rankings compared side by side: one labelled run per map, the default map's answers unchanged.
    maps = {"default": ranking, "retrieval": shipped_headmap("smollm2-135m")}
    ranked = run_ruler(model, tok, "niah_single_1", (1024,), 2, caches, seed=3, progress=False, rankings=maps)
    assert ranked.methods() == ["full", "headwise[default]-30%", "headwise[retrieval]-30%"]
    assert [o.prediction for o in ranked.outcomes if o.method == "headwise[default]-30%"] == [
        o.prediction for o in headwise
    ]
    assert set(ranked.settings["rankings"]) == {"default", "retrieval"}
    saved = json.loads(json.dumps(result.to_dict()))
    assert saved["format"] == "headwise.ruler"
    assert saved["settings"]["seed"] == 3 and "sentence_splitter" in saved["settings"]["deviations"]
    assert {(r["method"], r["length"]) for r in saved["scores"]} == {("full", 1024), ("headwise-30%", 1024)}
    page = report([result.save(tmp_path / "results.json")], tmp_path / "report.html").read_text()
    assert 'class="view ruler"' in page and html.escape(full[0].prediction) in page  # the report shows the answers


def test_the_reader_answers_a_ruler_sample_read_in_chunks_and_says_what_it_gave_the_model(smol):
    model, tok = smol
    config = ReaderConfig(chunk=512, keep=128)  # a 2K sample read in four chunks, 128 tokens carried
    result = run_ruler(model, tok, "niah_single_1", (2048,), 1, headmap=shipped_headmap("smollm2-135m"),
                       reader=config, seed=3, progress=False)  # fmt: skip
    (outcome,) = result.outcomes
    assert outcome.method == "reader-sentence" and outcome.prompt_tokens > 1500
    assert outcome.in_evidence and outcome.score == 100  # the needle was kept, and the answer copies it
    assert result.settings["deviations"] == READER_DEVIATIONS and result.settings["reader"]["chunk"] == 512


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "niah_single_9"], "unknown RULER task"),
        (["--budget", "1.5", "--cache", "headwise"], "budget is a share"),
        (["--lengths", "16384"], "exceeds smollm2-135m's window"),
        (["--lengths", "512"], "at least 1024 tokens"),
        (["--reader", "headwise", "--cache", "headwise"], "cannot be combined"),
        (["--samples", "0"], "--samples must be at least 1"),
    ],
)
def test_bad_ruler_input_fails_fast_and_clearly(args, message):
    result = CliRunner().invoke(app, ["ruler", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
