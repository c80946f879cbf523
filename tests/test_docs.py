"""The API reference names every public name; the README's examples run; every relative link between
the Markdown pages resolves, anchors included."""

import os
import re

import pytest

import qlayers
from qlayers import compat, functional, init, memory, quaternion, reference
from qlayers.compat import speechbrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API = open(os.path.join(ROOT, "docs", "API.md")).read()
README = open(os.path.join(ROOT, "README.md")).read()
PAGES = ["README.md", "CONTRIBUTING.md"] + sorted(
    f"docs/{name}" for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")
)


@pytest.mark.parametrize(
    "module", [qlayers, functional, quaternion, compat, speechbrain, init, memory, reference], ids=lambda m: m.__name__
)
def test_every_public_name_is_documented(module):
    missing = [name for name in module.__all__ if f"`{name}" not in API]
    assert not missing, f"docs/API.md does not mention {missing} from {module.__name__}"


def test_readme_examples_run():
    # The README's Python blocks are what a newcomer copies first.
    blocks = re.findall(r"^```python\n(.*?)^```", README, flags=re.M | re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def without_fences(markdown):
    return re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)


def without_code(markdown):
    """The page without fenced blocks and inline code spans, where brackets are not links."""
    return re.sub(r"`[^`]*`", "", without_fences(markdown))


def anchors(path):
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.*)$", without_fences(open(path).read()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def relative_links():
    """(page, target) for every link or image in the pages that is not a URL."""
    links = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", without_code(open(os.path.join(ROOT, page)).read())):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target):
                links.append((page, target))
    return links


LINKS = relative_links()


def test_the_pages_link_to_each_other():
    # A change to the link syntax the test reads would otherwise pass vacuously.
    assert len(LINKS) >= 20
    linked = {os.path.normpath(target.partition("#")[0]) for page, target in LINKS if page == "README.md"}
    assert set(PAGES) - {"README.md"} <= linked, "every page is reachable from the README"


@pytest.mark.parametrize("page, target", LINKS, ids=[f"{page}:{target}" for page, target in LINKS])
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
    assert os.path.exists(resolved), f"{page} links to {target}, which does not exist"
    if anchor:
        assert resolved.endswith(".md"), f"{page} links to an anchor in {target}, which is not a Markdown page"
        assert anchor in anchors(resolved), f"{page} links to #{anchor}, which no heading of {path or page} gives"
