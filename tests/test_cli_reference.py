"""docs/commands.md is the generated command reference, and stays in sync with the CLI."""

import re
from pathlib import Path

from clipgen.cli.reference import generate_reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"


def test_docs_commands_md_is_up_to_date():
    text = generate_reference()
    assert DOC.read_text(encoding="utf-8") == text, (
        "docs/commands.md is stale: run `python -m clipgen.cli.reference > docs/commands.md`")


def test_reference_lists_every_command_with_its_options():
    text = generate_reference()
    for cmd in ("clipgen data synth", "clipgen train clip", "clipgen eval zero-shot", "clipgen extract merge",
                "clipgen cka", "clipgen sae train", "clipgen circuits compute", "clipgen circuits similarity",
                "clipgen demo"):
        assert f"### {cmd}\n" in text, cmd
    demo = text[text.index("### clipgen demo\n"):].split("\n### ")[0]
    assert "| `--test-domain` | str | sketch |" in demo
    assert "--scale" not in demo  # hidden options stay out
    assert "| `--progress`, `--no-progress` | bool | `--progress` |" in demo


ROOT = DOC.parent.parent
#: References to documents the user does not have: design-spec sections, issue numbers, section signs.
PRIVATE_REFERENCE = re.compile(r"\bspec(?:ification)?\s+(?:section\s+)?§?\d|\bsections?\s+\d|\bissues?\s+#?\d|§",
                               re.IGNORECASE)


def _user_documents() -> dict[str, str]:
    docs = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))}
    docs["README.md"] = (ROOT / "README.md").read_text(encoding="utf-8")
    docs["docs/commands.md"] = generate_reference()  # every command's help text and docstring
    return docs


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_user_texts_name_the_thing_not_a_private_spec_or_issue():
    found = [(name, line.strip()) for name, text in _user_documents().items() for line in text.splitlines()
             if PRIVATE_REFERENCE.search(line)]
    assert not found, "\n".join(f"{n}: {line[:160]}" for n, line in found)


def test_links_and_mentioned_documents_exist():
    """Relative links resolve (file and heading), and every docs/*.md a text mentions is shipped."""
    broken = []
    for name, text in _user_documents().items():
        base = (ROOT / name).parent if name.endswith(".md") else ROOT
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (base / file) if file else ROOT / name
            if not path.exists() or anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append((name, target))
        for m in re.finditer(r"\bdocs/[\w.-]+\.md\b", text):
            if not (ROOT / m.group(0)).exists():
                broken.append((name, m.group(0)))
    assert not broken, broken
