"""The README's Layout section drawn from the tree: every module of src/resnetlab is named in its
tree, and every module it names exists (issue 38: the Layout section, true)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "resnetlab"


def layout_tree() -> str:
    """The ``` block of the README's Layout section that draws src/resnetlab/."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout") :]
    start = section.index("```\nsrc/resnetlab/")
    return section[start : section.index("```\n", start + 4)]


def test_every_module_is_named_in_the_layout():
    named = set(re.findall(r"\b(\w+\.py)\b", layout_tree()))
    modules = {p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert modules - named == set()


def test_every_module_the_layout_names_exists():
    named = set(re.findall(r"\b(\w+\.py)\b", layout_tree()))
    files = {p.name for p in ROOT.glob("src/resnetlab/**/*.py")}
    files |= {p.name for p in ROOT.glob("notebooks/*.py")}
    assert named - files == set()
