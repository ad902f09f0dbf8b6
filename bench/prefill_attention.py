"""bfloat16 prefill on the CPU: PyTorch's SDPA kernel vs headwise's blocked causal attention.

    python -m bench.prefill_attention --model smollm2-135m --lengths 1024,2048,4096,8192   # ~4 min

For each length, one prefill pass (no cache, the last token's logits) of real text, best of `--repeats`,
the two paths alternated so that both see the same machine: the model's own SDPA, and the same model under
`hw.attach` (its causal prefill as blocked bfloat16 matmuls). Reports seconds, tokens/s, the estimated
TFLOP/s and its share of a bfloat16 2048^3 matmul timed in the same run, and how far apart the two paths'
last hidden states are (relative norm). Writes bench/results/<model>/prefill_attention.{json,md,png}.
"""

from __future__ import annotations

import argparse
import time

from bench.common import command, matmul_tflops, prefill_tflop, results_dir, write_json, write_markdown


def timed(run) -> float:
    """Wall-clock seconds of one `run()`."""
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", default="1024,2048,4096,8192")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    import headwise as hw

    model, tok = hw.load_model(args.model, dtype="bfloat16")
    text = hw.load_haystack("moby-dick").text
    ids = torch.tensor([tok(text[: 6 * max(map(int, args.lengths.split(",")))]).input_ids])

    rows = []
    for length in map(int, args.lengths.split(",")):
        prompt = ids[:, :length]

        @torch.inference_mode()
        def sdpa(prompt=prompt):
            return model(prompt, use_cache=False, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]

        def blocked(prompt=prompt):
            with hw.attach(model):
                return sdpa(prompt)

        plain, ours = sdpa().float(), blocked().float()
        gap = float((ours - plain).norm() / plain.norm())
        seconds = {"sdpa": float("inf"), "blocked": float("inf")}
        for _ in range(args.repeats):  # alternate, so that a slow spell of the machine hits both
            seconds["sdpa"] = min(seconds["sdpa"], timed(sdpa))
            seconds["blocked"] = min(seconds["blocked"], timed(blocked))
        work = prefill_tflop(model.config, length)
        for path, s in seconds.items():
            rows.append({"length": length, "path": path, "seconds": round(s, 3), "tflops": round(work / s, 4)})
        rows[-1]["hidden_gap"] = round(gap, 4)
    ceiling = matmul_tflops("bfloat16")
    for row in rows:
        row["share_of_matmul"] = round(row["tflops"] / ceiling, 3)

    out = results_dir(args.model)
    write_json(
        out / "prefill_attention.json",
        {"command": command(), "model": args.model, "matmul_tflops": round(ceiling, 4), "rows": rows},
    )
    table = ["| length | SDPA s | blocked s | speed-up | SDPA tokens/s | blocked tokens/s | blocked % of matmul |",
             "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for sdpa_row, ours in zip(rows[::2], rows[1::2], strict=True):
        n = sdpa_row["length"]
        table.append(
            f"| {n} | {sdpa_row['seconds']:.2f} | {ours['seconds']:.2f} | {sdpa_row['seconds'] / ours['seconds']:.2f}x"
            f" | {n / sdpa_row['seconds']:.0f} | {n / ours['seconds']:.0f} | {ours['share_of_matmul']:.0%} |"
        )
    about = (
        f"`{command()}` — {args.model} in bfloat16, one prefill pass of Moby-Dick's first tokens, best of "
        f"{args.repeats}; a bfloat16 2048^3 matmul ran at {ceiling:.3f} TFLOP/s in the same run. The two paths' "
        f"last hidden states differ by at most {max(r.get('hidden_gap', 0) for r in rows):.2%} (relative norm)."
    )
    write_markdown(out / "prefill_attention.md", f"bfloat16 prefill · {args.model}", about, table)
    plot(rows, out / "prefill_attention.png", args.model)


def plot(rows: list[dict], path, name: str) -> None:
    """Prefill tokens/s by length, one line per path."""
    from headwise.plots import _figure, _save

    fig, ax = _figure(5.5, 3.6)
    for path_name, label in (("sdpa", "PyTorch SDPA"), ("blocked", "headwise blocked bf16")):
        points = [(r["length"], r["length"] / r["seconds"]) for r in rows if r["path"] == path_name]
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("prefill tokens/s")
    ax.set_title(f"bfloat16 prefill on this CPU · {name}", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


if __name__ == "__main__":
    main()
