"""The report's tiny document model: headings, paragraphs, tables, lists and figures, rendered to Markdown and to one
self-contained HTML page (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Block:
    kind: str  # h1 h2 h3 p table figure list
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)  # table rows (first = header) or list items ([item])
    path: Path | None = None  # figure


class Document:
    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(Block(f"h{level}", text))

    def p(self, text: str) -> None:
        self.blocks.append(Block("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(Block("table", rows=[list(map(str, header))] + [[str(c) for c in r] for r in rows]))

    def items(self, items: Sequence[str]) -> None:
        self.blocks.append(Block("list", rows=[[i] for i in items]))

    def figure(self, path: Path | None, caption: str) -> None:
        """A figure with its one-sentence caption; a missing file becomes a note, never a broken link."""
        if path is None or not Path(path).is_file():
            self.p(f"*(figure not available: {caption})*")
            return
        self.blocks.append(Block("figure", caption, path=Path(path)))

    # -- rendering -----------------------------------------------------------------------------------------------
    def markdown(self, base: Path) -> str:
        out: list[str] = []
        for b in self.blocks:
            if b.kind.startswith("h"):
                out.append("#" * int(b.kind[1]) + " " + b.text)
            elif b.kind == "p":
                out.append(b.text)
            elif b.kind == "list":
                out.append("\n".join(f"- {r[0]}" for r in b.rows))
            elif b.kind == "table":
                head, *body = b.rows
                lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(r) + " |" for r in body]
                out.append("\n".join(lines))
            elif b.kind == "figure":
                rel = _relative(b.path, base)
                out.append(f"![{_md_alt(b.text)}]({rel})\n\n*{b.text}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                 f"</title>\n<style>{_CSS}</style></head><body>"]
        for b in self.blocks:
            if b.kind.startswith("h"):
                parts.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
            elif b.kind == "p":
                parts.append(f"<p>{_inline(b.text)}</p>")
            elif b.kind == "list":
                parts.append("<ul>" + "".join(f"<li>{_inline(r[0])}</li>" for r in b.rows) + "</ul>")
            elif b.kind == "table":
                head, *body = b.rows
                parts.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                             + "</tr></thead><tbody>"
                             + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                             + "</tbody></table>")
            elif b.kind == "figure":
                data = base64.b64encode(b.path.read_bytes()).decode("ascii")
                parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(b.text)}\">"
                             f"<figcaption>{_inline(b.text)}</figcaption></figure>")
        parts.append("</body></html>\n")
        return "\n".join(parts)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}"
        "th{background:#f0f0f0}figure{margin:1.5em 0}img{max-width:100%}figcaption{font-style:italic;color:#333}"
        "code{background:#f4f4f4;padding:0 .2em}")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def _md_alt(text: str) -> str:
    return text.replace("[", "(").replace("]", ")")[:120]


def _inline(text: str) -> str:
    """Markdown's `code`, **bold** and *italic* in HTML (enough for the report's own text)."""
    import re

    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", s)
    return s
