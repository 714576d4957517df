import csv

import pytest

from clipgen.errors import ClipgenError
from clipgen.tsv import count_rows, read_tsv, write_tsv


def test_roundtrip_with_quotes_tabs_and_newlines(tmp_path):
    rows = [("/a.jpg", 'a "quoted" word'), ("/b.jpg", "tab\there\nnewline"), ("/c.jpg", '"starts with quote')]
    p = tmp_path / "x.tsv"
    assert write_tsv(p, rows) == 3
    back = read_tsv(p)
    assert back[0] == ("/a.jpg", 'a "quoted" word')
    assert back[1] == ("/b.jpg", "tab here newline")
    assert back[2] == ("/c.jpg", '"starts with quote')
    assert count_rows(p) == 3


def test_pandas_reads_what_we_write(tmp_path):
    """open_clip_train reads TSVs with pandas.read_csv(sep='\\t'); it must see the same captions."""
    pd = pytest.importorskip("pandas")
    rows = [("/a.jpg", 'a "quoted" word'), ("/c.jpg", '"starts with quote'), ("/d.jpg", "plain")]
    p = tmp_path / "x.tsv"
    write_tsv(p, rows)
    df = pd.read_csv(p, sep="\t")
    assert list(df["filepath"]) == [r[0] for r in rows]
    assert list(df["title"]) == [r[1] for r in rows]


def test_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("filepath\ttitle\n/a.jpg\tok\n/b.jpg\n")
    with pytest.raises(ClipgenError, match=r"bad.tsv:3: expected 2"):
        read_tsv(p)
    p.write_text("path\tcaption\n")
    with pytest.raises(ClipgenError, match=r"bad.tsv:1: header"):
        read_tsv(p)
    p.write_text("")
    with pytest.raises(ClipgenError, match="empty TSV"):
        read_tsv(p)
    p.write_text("filepath\ttitle\n/nonexistent.jpg\tx\n")
    with pytest.raises(ClipgenError, match=r"bad.tsv:2: image /nonexistent.jpg does not exist"):
        read_tsv(p, check_files=True)
    with pytest.raises(ClipgenError, match="not found"):
        read_tsv(tmp_path / "missing.tsv")


def test_write_refuses_existing_without_force_and_leaves_no_partial(tmp_path):
    p = tmp_path / "x.tsv"
    write_tsv(p, [("/a", "b")])
    with pytest.raises(ClipgenError, match="already exists"):
        write_tsv(p, [("/c", "d")], force=False)

    def rows():
        yield ("/e", "f")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_tsv(p, rows())
    assert read_tsv(p) == [("/a", "b")]  # old file intact
    assert [f.name for f in tmp_path.iterdir()] == ["x.tsv"]  # no temporary left behind
    with open(p) as f:
        assert next(csv.reader(f, delimiter="\t")) == ["filepath", "title"]


def test_caption_with_an_unclosed_quote_is_refused_not_merged(tmp_path):
    """csv and pandas both take the lines after an unclosed opening quote into that field: 4 rows would read as 2."""
    p = tmp_path / "raw.tsv"
    p.write_text('filepath\ttitle\n/a.jpg\tone\n/b.jpg\t"two\n/c.jpg\tthree "\n/d.jpg\tfour\n')
    with pytest.raises(ClipgenError, match=r"raw.tsv:3: a field starts with a double quote .* lines 3-4 read as one"):
        read_tsv(p)
    # blank lines are skipped, not mistaken for a multi-line row; line numbers stay those of the file
    p.write_text('filepath\ttitle\n\n/a.jpg\tone\n\n/b.jpg\t"quoted" two\n')
    from clipgen.tsv import iter_tsv_lines

    assert list(iter_tsv_lines(p)) == [(3, "/a.jpg", "one"), (5, "/b.jpg", "quoted two")]  # pandas reads it so too


def test_unclean_write_keeps_quotes_tabs_and_doubled_spaces_through_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = [("/a.jpg", '"starts with quote'), ("/b.jpg", "tab\there"), ("/c.jpg", "doubled  spaces  "),
            ("/d.jpg", 'mid "quote" and ""two""'), ("/e.jpg", "line\nbreak\r\nand\rcr"), ("/f.jpg", '"')]
    p = tmp_path / "x.tsv"
    assert write_tsv(p, rows, clean=False) == 6
    want = [r if i != 4 else ("/e.jpg", "line break and cr") for i, r in enumerate(rows)]
    assert read_tsv(p) == want
    df = pd.read_csv(p, sep="\t")
    assert list(zip(df["filepath"], df["title"], strict=True)) == want
    # the default (clean) write collapses whitespace, and pandas reads that back too
    write_tsv(p, rows)
    assert list(pd.read_csv(p, sep="\t")["title"]) == [" ".join(r[1].split()) for r in rows]


def test_non_utf8_bytes_are_reported_on_their_own_line(tmp_path):
    # 200 rows of long captions: the text reader decodes far ahead, so the csv reader's count is not the line
    lines = ["filepath\ttitle"] + [f"img/{i}.png\t" + "a photo of a long caption " * 8 for i in range(200)]
    data = "\n".join(lines).encode()
    start = data.index(b"img/137.png")
    bad = data[:start + 4] + b"\xff" + data[start + 5:]  # line 139 (the header is line 1)
    p = tmp_path / "bad.tsv"
    p.write_bytes(bad)
    with pytest.raises(ClipgenError) as e:
        read_tsv(p)
    assert str(e.value).startswith(f"{p}:139: not UTF-8 text: byte 0xff at column 5")
