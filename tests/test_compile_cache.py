"""torch.compile's disk caches never hand a graph of one qlayers build to another.

The caches key on the traced graph, which names qlayers' operators but holds none of their code, so
qlayers adds its build's fingerprint to torch's cache key tag (qlayers/_library.py).
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import qlayers
from qlayers import _library

pytestmark = pytest.mark.skipif(
    not hasattr(torch.compiler.config, "cache_key_tag"), reason="this torch has no compile cache key tag"
)

# Compiles one training step with inductor and prints how many graphs the disk caches served.
_STEP = textwrap.dedent(
    """
    import torch
    import qlayers
    from torch._dynamo.utils import counters

    layer = qlayers.QLinear(8, 8)
    step = torch.compile(lambda x: layer(x).sum(), backend="inductor")
    step(torch.randn(4, 8, requires_grad=True)).backward()
    print(counters["aot_autograd"]["autograd_cache_hit"] + counters["inductor"]["fxgraph_cache_hit"])
    """
)


def _cache_hits(package_root, cache_dir) -> int:
    env = dict(
        os.environ,
        PYTHONPATH=str(package_root),
        TORCHINDUCTOR_CACHE_DIR=str(cache_dir),
        TORCHINDUCTOR_FX_GRAPH_CACHE="1",
        TORCHINDUCTOR_AUTOGRAD_CACHE="1",
    )
    env.pop("TORCH_COMPILE_CACHE_KEY_TAG", None)
    done = subprocess.run(
        [sys.executable, "-c", _STEP],
        env=env,
        cwd=package_root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])


def test_a_rebuilt_library_never_reloads_the_old_build_s_compiled_graphs(tmp_path):
    # A copy of the installed package stands for one install; touching its library, for a rebuild.
    root = tmp_path / "site"
    shutil.copytree(os.path.dirname(qlayers.__file__), root / "qlayers", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    assert _cache_hits(root, cache) == 0
    assert _cache_hits(root, cache) > 0, "the same build should reuse its compiled graphs"
    library = root / "qlayers" / os.path.basename(qlayers._C.__file__)
    status = library.stat()
    os.utime(library, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    assert _cache_hits(root, cache) == 0


def test_the_user_s_cache_key_tag_is_kept_and_qlayers_adds_its_own_once():
    own = f"qlayers-{_library.library_fingerprint(qlayers._C.__file__)}"
    before = torch.compiler.config.cache_key_tag
    assert own in before.split("+")  # import tagged the caches
    # The config's own patch: pytest's monkeypatch deletes a config entry on undo.
    with torch.compiler.config.patch(cache_key_tag="experiment-7"):
        _library.tag_compile_caches(qlayers._C)
        _library.tag_compile_caches(qlayers._C)
        assert torch.compiler.config.cache_key_tag == f"experiment-7+{own}"
    assert torch.compiler.config.cache_key_tag == before
