"""The package's shape: imports run one way (core -> scores -> apps -> eval -> cli), modules stay small,
and the public API names what it promises."""

import ast
from pathlib import Path

import headwise

PACKAGE = Path(headwise.__file__).parent
LAYERS = ["core", "scores", "apps", "eval", "reports", "cli"]  # a layer may import only from layers before it
LEAVES = {"errors", "plots", "version"}  # importable from anywhere; import nothing of headwise's above core


def layer_of(module: str) -> str:
    part = module.split(".")[1] if module.count(".") else "__init__"
    return part.removesuffix(".py")


def imports() -> dict[str, set[str]]:
    """headwise modules each module imports (also inside functions and TYPE_CHECKING blocks)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("headwise", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        found[name] = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | {
            a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
        }
        found[name] = {m for m in found[name] if m.startswith("headwise")}
    return found


def test_imports_run_one_way():
    wrong = []
    for module, targets in imports().items():
        here = layer_of(module)
        if here == "__init__":
            continue
        for target in targets:
            there = layer_of(target)
            if there in LEAVES or there == here or there == "data":
                continue
            if there == "__init__":
                allowed = here == "cli"  # only the CLI uses the public API; the package never imports itself
            else:
                allowed = here not in LEAVES and LAYERS.index(there) < LAYERS.index(here)
            if not allowed:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_modules_stay_small_and_the_api_is_public():
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long
    assert set(headwise.__all__) >= {
        "load_model", "profile", "ablate", "mask_heads", "HeadMap", "HeadwiseCache", "read", "rank", "run_niah",
        "__version__",
    }  # fmt: skip
    assert (PACKAGE / "py.typed").is_file()
    for name in headwise.__all__:
        assert getattr(headwise, name) is not None
    # importing a subpackage binds its name on headwise: a public name must not be one, or it turns into a module
    submodules = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")}
    assert not submodules & set(headwise.__all__), submodules & set(headwise.__all__)
