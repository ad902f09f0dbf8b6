"""The needle grids the benchmarks run, declared once. Each is a headwise NeedleGrid: lengths x depths x
needles in one book, prose starts drawn with its seed; held-out grids use the shipped list's last needles,
which profiling never sees."""

from bench.common import DATA, ROOT
from headwise.eval.grids import PROFILE_GRID, NeedleGrid

BENCH = ROOT / "bench"

# bench.retrieval_heads: profile on two books with `headwise profile`'s defaults, ablate on held-out needles.
PROFILE = PROFILE_GRID
PROFILE_BOOKS = ("frankenstein", "pride-and-prejudice")
ABLATION = NeedleGrid((500, 1000), (0.1, 0.5, 0.9), needles=4, held_out=True, seed=1)

# bench.kv_cache: the committed 18-test grid (3 held-out needles x 2 lengths x 3 depths).
KV_CACHE = NeedleGrid((1200, 2400), (0.1, 0.5, 0.9), needles=3, held_out=True, seed=3)

# bench.critical_heads: a few held-out tests per masked set, the first `--tests` of this grid.
CRITICAL = NeedleGrid((500, 1000), (0.1, 0.5, 0.9), needles=2, held_out=True, seed=2)

# bench.kv_swaps: (book, needles, lengths, depths, seed) of the grids kv_cache-dev, -fresh, -fresh2, -fresh3.
# Needles are a slice of the shipped list or a file of needles written for the check; "fresh" reads a book
# no other grid reads, shipped with the benchmarks (bench/data/LICENSE.md).
SWAP_GRIDS = {
    "dev": ("pride-and-prejudice", slice(4, 7), [1200, 2400, 4000], [0.1, 0.3, 0.5, 0.7, 0.9], 5),
    "fresh": (str(DATA / "romeo-and-juliet.txt"), BENCH / "needles-fresh.json", [1500, 3000], [0.3, 0.7], 21),
    "fresh2": ("frankenstein", BENCH / "needles-fresh2.json", [2000, 3500], [0.2, 0.6], 41),
    "fresh3": ("moby-dick", BENCH / "needles-fresh3.json", [1800, 3000], [0.35, 0.8], 67),
}
