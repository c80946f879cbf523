"""Every signature the docs print is the code's: README.md, CONTRIBUTING.md and docs/*.md against
inspect.signature.

A printed signature is a code span `name(parameters)` (or names followed by `(parameters)`, as in
"`QRNN`, `QLSTM`, `QLiGRU` take `(input_size, ...)`") whose parameters are all of the forms
`p`, `p=default`, `*`, `*args`, `**kwargs` or `...`; spans such as `QLinear(·, G·hidden)` are
expressions, not signatures. `...` stands for parameters left out; without it the printed list is
the whole list, `**kwargs` included. Names resolve in the modules of their API.md section (the other
pages: the top-level package and qlayers.functional), or by their dotted path.
"""

import ast
import importlib
import inspect
import os
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
PARAMETER = re.compile(rf"^(\*{{0,2}}{IDENTIFIER}(=.+)?|\*|\.\.\.|…)$")

# API.md's sections and the modules their names live in; sections not listed (the raw ops, the
# migration tables, which print the peers' signatures) are not checked.
API_SECTIONS = {
    "`qlayers` (modules)": ["qlayers"],
    "`qlayers.functional`": ["qlayers.functional", "qlayers.functional.recurrent", "qlayers.functional.conv"],
    "`qlayers.quaternion`": ["qlayers.quaternion"],
    "`qlayers.init`": ["qlayers.init"],
    "`qlayers.memory`": ["qlayers.memory"],
    "`qlayers.reference`": ["qlayers.reference"],
    "`qlayers.compat`": ["qlayers.compat"],
    "`qlayers.compat.speechbrain`": ["qlayers.compat.speechbrain", "qlayers.compat.speechbrain.q_ops"],
    "`qlayers.compat.core_qnn`": ["qlayers.compat.core_qnn"],
}
# The other pages (README, CONTRIBUTING, docs/ but API.md): the package's own layers and functions.
PAGE_MODULES = ["qlayers", "qlayers.functional"]
# Pages not checked: the migration page prints the peers' signatures, and calls such as
# `QLinear(in, out)` that read as signatures.
SKIPPED_PAGES = ("docs/migration.md",)
DOCUMENTS = ["README.md", "CONTRIBUTING.md"] + sorted(
    f"docs/{name}" for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")
)


def split_parameters(text):
    """Top-level comma-separated parts of a parameter list (defaults may hold brackets or strings)."""
    parts, depth, current, quote = [], 0, "", None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def code_spans(markdown):
    """(span, section) for each inline code span outside fenced blocks; newlines become spaces."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    section, found = "", []
    for block in re.split(r"^(#{2,3} .*)$", markdown, flags=re.M):
        if re.match(r"#{2,3} ", block):
            section = block.lstrip("#").strip()
            continue
        flat = re.sub(r"\s*\n\s*", " ", block)
        found += [(match, section) for match in re.findall(r"`([^`]+)`", flat)]
        # Names followed by a separate parameter span: "`A`, `B` take `(...)`", "`A`, `B` `(...)`".
        for names, params in re.findall(r"((?:`[\w./]+`(?:,? (?:and |or )?)?)+)(?:takes? )?`\(([^`]*)\)`", flat):
            for name in re.findall(r"`([\w./]+)`", names):
                found.append((f"{name}({params})", section))
    return found


def expand_dims(name):
    """QConvTranspose1d/2d/3d -> QConvTranspose1d, QConvTranspose2d, QConvTranspose3d."""
    match = re.fullmatch(r"(\w+?)(\d)d((?:/\dd)+)", name)
    if not match:
        return [name]
    return [f"{match.group(1)}{d}d" for d in [match.group(2)] + re.findall(r"/(\d)d", match.group(3))]


def section_modules(document, section):
    """The modules a section's names resolve in, or None where the section is not checked."""
    if document == "docs/API.md":
        return API_SECTIONS.get(section)
    return None if document in SKIPPED_PAGES else PAGE_MODULES


def printed_signatures():
    """(where, name, parameters, modules) for every signature the documents print."""
    signatures = []
    for document in DOCUMENTS:
        text = open(os.path.join(ROOT, document)).read()
        for span, section in code_spans(text):
            match = re.fullmatch(rf"((?:{IDENTIFIER}\.)*[\w/]+)\((.*)\)", span.strip())
            if not match:
                continue
            parameters = split_parameters(match.group(2))
            if not all(PARAMETER.match(p) for p in parameters):
                continue  # an expression or a schema, not a Python signature
            modules = section_modules(document, section)
            if modules is None:
                continue
            for name in expand_dims(match.group(1)):
                signatures.append((f"{document} ({section})", name, parameters, modules))
    return signatures


def resolve(name, modules):
    if "." in name:
        if not name.startswith("qlayers."):
            return None  # torch's, or a name relative to a section's module
        module, _, attribute = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            return None
    for module in modules:
        found = getattr(importlib.import_module(module), name, None)
        if callable(found):
            return found
    return None


def default_matches(printed, actual):
    try:
        return ast.literal_eval(printed) == actual
    except (ValueError, SyntaxError):
        return printed == repr(actual) or (isinstance(actual, torch.dtype) and printed == str(actual))


def mismatches(parameters, signature):
    """What the printed parameter list gets wrong about the signature (an empty list if nothing)."""
    actual = list(signature.parameters.values())
    problems, position, skipping, keyword_only = [], 0, False, False
    for printed in parameters:
        if printed in ("...", "…"):
            skipping = True
            continue
        if printed == "*":
            keyword_only = True
            continue
        name, _, default = printed.lstrip("*").partition("=")
        names = [p.name for p in actual[position:]]
        if name not in names or (not skipping and names.index(name) != 0):
            expected = actual[position].name if position < len(actual) else "nothing"
            problems.append(f"{name!r} where the code has {expected!r}")
            break
        position += names.index(name)
        parameter = actual[position]
        if printed.startswith("**") != (parameter.kind is inspect.Parameter.VAR_KEYWORD) or (
            printed.startswith("*") and not printed.startswith("**")
        ) != (parameter.kind is inspect.Parameter.VAR_POSITIONAL):
            problems.append(f"{printed!r} is {parameter.kind.description} in the code")
        if keyword_only and parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            problems.append(f"{name!r} follows '*' but is not keyword-only")
        if default and parameter.default is inspect.Parameter.empty:
            problems.append(f"{name!r} has no default in the code")
        elif default and not default_matches(default, parameter.default):
            problems.append(f"{name}={default} where the code has {name}={parameter.default!r}")
        elif not default and parameter.default is not inspect.Parameter.empty:
            problems.append(f"{name!r} printed without its default {parameter.default!r}")
        position += 1
        skipping = False
    if not skipping and position < len(actual):
        problems.append(f"leaves out {[p.name for p in actual[position:]]} without '...'")
    return problems


SIGNATURES = printed_signatures()


def test_the_docs_print_signatures_of_the_main_layers():
    # The parser finds what it should: a change that hid the signatures would pass vacuously.
    printed = {name for _, name, _, _ in SIGNATURES}
    assert {"QLinear", "QConv2d", "QConvTranspose3d", "QLSTM", "QBatchNorm", "quaternion_linear"} <= printed
    assert len(SIGNATURES) >= 60


@pytest.mark.parametrize(
    "where, name, parameters, modules", SIGNATURES, ids=[f"{s[0].split()[0]}:{s[1]}" for s in SIGNATURES]
)
def test_printed_signature_is_the_code_s(where, name, parameters, modules):
    target = resolve(name, modules)
    if target is None:
        pytest.skip(f"{name} is not a qlayers name in {modules} (a method, or a peer's or torch's)")
    signature = inspect.signature(target)
    first = next(iter(signature.parameters.values()), None)
    if "=" in parameters[0] and first is not None and first.default is inspect.Parameter.empty:
        pytest.skip(f"{name}({', '.join(parameters)}) is a call with a keyword, not a signature")
    problems = mismatches(parameters, signature)
    assert not problems, f"{where} prints {name}({', '.join(parameters)}): " + "; ".join(problems)


def usage_defaults(path):
    """(option, printed value, the parser's default) for each `[--option value]` of a script's
    docstring whose value is a literal (`PATH`, `cpu|cuda` and the like are placeholders)."""
    tree = ast.parse(open(path).read())
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args:
            option = node.args[0]
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if isinstance(option, ast.Constant) and isinstance(default, ast.Constant):
                defaults[option.value] = default.value
    usage = re.findall(r"\[(--[\w-]+) ([^\]|.]+)\]", ast.get_docstring(tree) or "")
    return [(option, value, defaults.get(option)) for option, value in usage if re.fullmatch(r"[a-z0-9.+-]+", value)]


SCRIPTS = sorted(
    os.path.join(folder, name)
    for folder in (os.path.join(ROOT, "examples"), os.path.join(ROOT, "benchmarks"))
    for name in os.listdir(folder)
    if name.endswith(".py")
)
USAGE = [(os.path.relpath(path, ROOT), *entry) for path in SCRIPTS for entry in usage_defaults(path)]


@pytest.mark.parametrize("script, option, printed, default", USAGE, ids=[f"{u[0]}:{u[1]}" for u in USAGE])
def test_usage_lines_print_the_parsers_defaults(script, option, printed, default):
    # examples/copy_task.py's usage said --delay 20 while its parser defaulted to 10.
    assert default is not None, f"{script}: {option} has no literal default in its parser"
    assert printed == str(default), f"{script}'s docstring shows [{option} {printed}], its parser defaults to {default}"
