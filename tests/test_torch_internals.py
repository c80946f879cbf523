"""Private torch APIs stay behind qlayers/_torch_internals.py.

A scan of the source (no import): every name qlayers and benchmarks/ reach in torch is followed
through imports and attribute chains (``torch._C.x``, ``from torch.autograd import forward_ad`` then
``forward_ad._current_level``, ``from torch.nn.modules.utils import _ntuple``), and one with an
underscored part, dunders aside (``torch.__version__``), may only appear in the wrappers' module.
"""

import ast
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTERNALS = "qlayers/_torch_internals.py"
EXEMPT: tuple = ()  # no file may call a private torch API but the wrappers' module


def _private(dotted: str) -> bool:
    """Whether a dotted name has an underscored part; dunders (``__version__``) are public."""
    if dotted.startswith("torch.ops.qlayers."):  # our own ops; an underscore marks an internal one
        return False
    parts = dotted.split(".")
    return any(part.startswith("_") and not (part.startswith("__") and part.endswith("__")) for part in parts)


def _dotted(node: ast.AST, aliases: Dict[str, str]) -> Optional[str]:
    """The dotted torch name an expression spells (``torch._C._x``), or None if it is not torch's."""
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def private_torch_names(source: str) -> List[str]:
    """Every private torch name a module's source imports or reaches, in order."""
    tree = ast.parse(source)
    aliases: Dict[str, str] = {}
    found: List[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch" or alias.name.startswith("torch."):
                    if _private(alias.name):
                        found.append(alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases["torch"] = "torch"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "torch" or node.module.startswith("torch."):
                for alias in node.names:
                    dotted = f"{node.module}.{alias.name}"
                    if _private(dotted):
                        found.append(dotted)
                    aliases[alias.asname or alias.name] = dotted
    # Attribute chains, outermost first, each reported once (torch._C._x, not also torch._C).
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            dotted = _dotted(node, aliases)
            value = node.value
            while isinstance(value, ast.Attribute):
                inner.add(id(value))
                value = value.value
            if dotted is not None and _private(dotted):
                found.append(dotted)
    return found


def sources() -> List[Path]:
    files = sorted((ROOT / "qlayers").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) > 20
    return files


def test_the_scan_sees_every_way_of_reaching_a_private_name():
    source = (
        "import torch\nimport torch._dynamo as dynamo\nfrom torch import _C\nfrom torch.autograd import forward_ad\n"
        "from torch.nn.modules.utils import _ntuple as nt\nimport torch.nn.functional as F\n"
        "torch._C._x()\nforward_ad._current_level\n_C._y\nF._private\ntorch.__version__\ntorch.nn.functional.relu\n"
    )
    assert sorted(private_torch_names(source)) == [
        "torch._C",
        "torch._C._x",
        "torch._C._y",
        "torch._dynamo",
        "torch.autograd.forward_ad._current_level",
        "torch.nn.functional._private",
        "torch.nn.modules.utils._ntuple",
    ]


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_private_torch_apis_only_in_the_internals_module(path):
    relative = path.relative_to(ROOT).as_posix()
    found = private_torch_names(path.read_text())
    if relative == INTERNALS:
        assert found, "the internals module wraps private torch APIs: the scan should see them"
    elif relative not in EXEMPT:
        assert not found, f"{relative} uses private torch APIs; wrap them in {INTERNALS}: {sorted(set(found))}"
