"""The API reference names every public name."""

import os

import pytest

import qlayers
from qlayers import compat, functional, init, memory, quaternion, reference
from qlayers.compat import speechbrain

API = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "API.md")).read()


@pytest.mark.parametrize(
    "module", [qlayers, functional, quaternion, compat, speechbrain, init, memory, reference], ids=lambda m: m.__name__
)
def test_every_public_name_is_documented(module):
    missing = [name for name in module.__all__ if f"`{name}" not in API]
    assert not missing, f"docs/API.md does not mention {missing} from {module.__name__}"
