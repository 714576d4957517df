"""docs/commands.md is the generated command reference, and stays in sync with the CLI."""

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
