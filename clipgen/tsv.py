"""Image-text TSV files (``filepath<TAB>title``), the format open_clip's csv loader reads.

Written with the csv module (tab delimiter, minimal quoting), which pandas' ``read_csv(sep="\\t")`` in
open_clip_train reads back exactly, also for captions that contain quote characters or tabs.

Read with the same quoting rules as pandas, so clipgen sees the rows training will see. One case is refused
instead of being read: a field that starts with a double quote that is never closed on its line (e.g. a raw caption
``"hello`` written without CSV quoting). Both pandas and the csv module would take the following lines into that
field until the next quote, silently merging rows, so it is an error naming the file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from clipgen.artifacts import atomic_path
from clipgen.errors import file_error

HEADER = ("filepath", "title")


def clean_caption(text: str) -> str:
    """One line, single spaces: tabs and newlines inside captions would break the TSV."""
    return " ".join(text.split())


def one_line(text: str) -> str:
    """The caption as it is, except that each line break (CR, LF) becomes a space: doubled spaces, tabs and quotes
    are kept (the writer quotes them so that pandas reads them back)."""
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def iter_tsv(path: str | Path, *, columns: tuple[str, ...] = HEADER, check_files: bool = False) -> Iterator[
        tuple[str, str]]:
    """Yield ``(filepath, title)`` rows, validating the header and field counts (file:line in errors)."""
    for _, fp, title in iter_tsv_lines(path, columns=columns, check_files=check_files):
        yield fp, title


def iter_tsv_lines(path: str | Path, *, columns: tuple[str, ...] = HEADER, check_files: bool = False) -> Iterator[
        tuple[int, str, str]]:
    """Yield ``(line, filepath, title)`` with the 1-based line of each row (see :func:`iter_tsv`)."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "TSV file not found")
    try:
        f = open(path, encoding="utf-8", newline="")  # noqa: SIM115 - closed by the with below
    except OSError as e:
        raise file_error(path, f"cannot read TSV ({e})") from None
    with f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise file_error(path, "empty TSV (expected a header 'filepath<TAB>title')") from None
        except UnicodeDecodeError:
            raise _decode_error(path) from None
        except csv.Error as e:
            raise file_error(path, f"unreadable TSV ({e})", line=1) from None
        missing = [c for c in columns if c not in header]
        if missing:
            raise file_error(path, f"header {header!r} lacks column(s) {', '.join(missing)}", line=1)
        idx = [header.index(c) for c in columns]
        n = len(header)
        line = 1
        try:
            for row in reader:
                first, line = line + 1, reader.line_num
                if not row:
                    continue
                if line > first:
                    raise file_error(path, f"a field starts with a double quote that is not closed on its line, so "
                                           f"lines {first}-{line} read as one row (pandas, which open_clip uses, "
                                           f"reads them the same way); write a quote inside a caption as CSV does, "
                                           f"the whole field in quotes with each quote doubled", line=first)
                if len(row) != n:
                    raise file_error(path, f"expected {n} tab-separated fields, found {len(row)}", line=line)
                fp, title = row[idx[0]], row[idx[1]]
                if not fp:
                    raise file_error(path, "empty filepath", line=line)
                if check_files and not Path(fp).is_file():
                    raise file_error(path, f"image {fp} does not exist", line=line)
                yield line, fp, title
        except UnicodeDecodeError:
            raise _decode_error(path) from None
        except csv.Error as e:
            raise file_error(path, f"malformed TSV ({e})", line=line) from None


def _decode_error(path: Path):
    """The error of a file that is not UTF-8, naming the line of the first bad byte (the text reader decodes ahead
    in blocks, so the csv reader's line count is not where the bytes are)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return file_error(path, f"not UTF-8 text: byte 0x{data[e.start]:02x} at column {col} ({e.reason})",
                          line=line)
    return file_error(path, "not UTF-8 text")


def read_tsv(path: str | Path, **kw) -> list[tuple[str, str]]:
    return list(iter_tsv(path, **kw))


def count_rows(path: str | Path) -> int:
    return sum(1 for _ in iter_tsv(path))


def write_tsv(path: str | Path, rows: Iterable[tuple[str, str]], *, force: bool = True,
              field: str = "force", clean: bool = True) -> int:
    """Write rows atomically (temporary name, renamed when complete); returns the number of rows.

    ``clean`` (the default) writes each caption as :func:`clean_caption` (one line, single spaces); ``clean=False``
    keeps it as it is except for line breaks (:func:`one_line`), e.g. base rows that the published scripts copy
    verbatim. Either way pandas' ``read_csv(sep="\\t")`` reads back exactly the captions written.
    """
    tidy = clean_caption if clean else one_line
    n = 0
    with atomic_path(path, force=force, field=field) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        w.writerow(HEADER)
        for fp, title in rows:
            w.writerow((one_line(fp), tidy(title)))
            n += 1
    return n
