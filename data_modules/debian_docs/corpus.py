"""A WikiText-103-shaped corpus of real English from Debian packages, for offline runs.

WikiText-103 cannot be downloaded on machines without internet. This module builds a corpus
in its layout from three Debian packages that ``apt-get`` installs from the Debian archive:

    dict-gcide    the GNU Collaborative International Dictionary of English (Webster's 1913
                  and later additions: definitions and quotations), GPL-2+   ~5.4 M words
    linux-doc     the Linux kernel's documentation (reStructuredText sources), GPL-2.0
                  (some files dual-licensed, see the package's copyright file)  ~3.6 M words
    python3-doc   the Python documentation (reStructuredText sources), PSF-2.0  ~1.4 M words

All of it written by people. Each source file (GCIDE: each run of ``--gcide-entries``
entries) is one article ``" = Title = "``; paragraphs become lines; literal/code blocks, tables
and directives are dropped; the text is tokenised Moses-style (punctuation split off,
``n't`` split, ``1,000 -> 1 @,@ 000``, ``3.5 -> 3 @.@ 5``, ``well-known -> well @-@ known``).
Articles are shuffled with a seed and dealt to test, then valid, until each holds
``--eval-words`` words; the rest is train. Words seen fewer than ``--min-count`` times in train
become ``<unk>`` everywhere (WikiText-103: 3), bounding the vocabulary as WikiText does.

    python -m data_modules.debian_docs prepare --out data/debian-docs
    # then: --data.init_args.data_dir data/debian-docs with WikiText103DataModule

(its command line: :mod:`data_modules.debian_docs.cli`). Missing packages: one message with the
``apt-get install`` line, exit status 2.
"""

from __future__ import annotations

import collections
import gzip
import random
import re
from collections.abc import Iterator
from pathlib import Path

APT_PACKAGES = "dict-gcide linux-doc python3-doc"
GCIDE = "usr/share/dictd/gcide.dict.dz"
RST_GLOBS = ("usr/share/doc/linux-doc-*/html/_sources", "usr/share/doc/python3*/html/_sources")
UNK = "<unk>"

# ------------------------------------------------------------------------------ tokenising

_NUMBER_SEP = re.compile(r"(?<=\d)([,.])(?=\d)")
_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")
_NT = re.compile(r"(\w)(n't)\b", re.IGNORECASE)
_CLITIC = re.compile(r"(\w)('(?:s|re|ve|ll|d|m))\b", re.IGNORECASE)
_CLITICS = {"'s", "'re", "'ve", "'ll", "'d", "'m"}
_PUNCT = re.compile(r"(?<!@)([^\w\s@'])(?!@)")


def tokenize(text: str) -> list[str]:
    """Moses-like tokens of one paragraph, with WikiText's ``@,@ @.@ @-@`` separators."""
    text = _NUMBER_SEP.sub(lambda m: " @" + m.group(1) + "@ ", text)
    text = _HYPHEN.sub(" @-@ ", text)
    text = _NT.sub(r"\1 \2", text)
    text = _CLITIC.sub(r"\1 \2", text)
    text = _PUNCT.sub(r" \1 ", text)
    tokens = []
    for word in text.split():
        if word.startswith("'") and len(word) > 1 and word.lower() not in _CLITICS:
            tokens += ["'", word[1:]]  # an opening quote ('tis, 'quoted'), not a clitic
        else:
            tokens.append(word)
    return tokens


# ------------------------------------------------------------------------------ sources

_RST_UNDERLINE = re.compile(r"^([=\-~^*#+`'\"])\1{2,}\s*$")
_RST_ROLE = re.compile(r":[\w:+-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{1,2}")
_RST_MARKUP = re.compile(r"``([^`]*)``|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|`([^`]+)`_{0,2}")


def _inline(text: str) -> str:
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    return _RST_MARKUP.sub(lambda m: next(g for g in m.groups() if g is not None), text)


def rst_article(text: str) -> tuple[str | None, list[tuple[int, str]]]:
    """(title, [(level, text)]) of one reStructuredText file: level 0 = paragraph, 1.. =
    heading. Literal blocks (after ``::``), directives, comments, tables and indented
    blocks are dropped; list items are kept as paragraphs."""
    lines = text.splitlines()
    out: list[tuple[int, str]] = []
    levels: dict[str, int] = {}
    para: list[str] = []
    skip_indented = False

    def flush():
        if para:
            joined = _inline(" ".join(p.strip() for p in para))
            if re.search(r"[A-Za-z]{2}", joined):
                out.append((0, joined))
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        nxt = lines[i + 1].rstrip() if i + 1 < len(lines) else ""
        indented = line[:1] in (" ", "\t")
        if skip_indented and (indented or not line):
            i += 1
            continue
        skip_indented = False
        if not line:
            flush()
        elif _RST_UNDERLINE.match(line):
            flush()  # an overline or a stray rule
        elif _RST_UNDERLINE.match(nxt) and len(nxt) >= len(line.strip()) and not indented:
            flush()
            level = levels.setdefault(nxt[0], len(levels) + 1)
            out.append((level, _inline(line.strip())))
            i += 1
        elif line.startswith("..") or line.lstrip().startswith(("+-", "|", "=====")):
            flush()
            skip_indented = True  # the directive's or comment's body
        elif indented and not para:
            skip_indented = True  # a block quote or code: not prose
            continue
        else:
            para.append(line[2:] if line[:2] in ("- ", "* ") else line)
            if line.endswith("::"):
                para[-1] = para[-1][:-1]
                flush()
                skip_indented = True
        i += 1
    flush()
    title = next((t for level, t in out if level > 0), None)
    return title, [(level, t) for level, t in out if not (level > 0 and t == title)]


def gcide_articles(text: str, entries_per_article: int) -> Iterator[tuple[str, list]]:
    """GCIDE's dict text as articles of ``entries_per_article`` entries: one paragraph per
    entry (headword line and definition joined), the pronunciation marks removed."""
    entries = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        if not lines or lines[0].startswith("00-database"):
            continue
        head = re.sub(r"\\[^\\]*\\", "", lines[0])  # drop \Pro*nun"ci*a`tion\
        body = " ".join([head] + lines[1:])
        body = re.sub(r"\[(?:1913 Webster|Webster 1913 Suppl\.|PJC|WordNet 1\.5)\]", "", body)
        entries.append(" ".join(body.split()))
    for start in range(0, len(entries), entries_per_article):
        chunk = entries[start : start + entries_per_article]
        title = f"GCIDE {chunk[0].split(',')[0].split()[0]}"
        yield title, [(0, e) for e in chunk]


def find_sources(root: Path) -> dict[str, list[Path]]:
    """{source: files} under ``root`` (``/`` normally); empty lists for missing packages."""
    found: dict[str, list[Path]] = {"gcide": [], "linux": [], "python": []}
    gcide = root / GCIDE
    if gcide.is_file():
        found["gcide"] = [gcide]
    for name, pattern in zip(("linux", "python"), RST_GLOBS, strict=True):
        dirs = sorted(root.glob(pattern))
        if dirs:  # the newest version only
            found[name] = sorted(dirs[-1].rglob("*.rst.txt"))
    return found


def articles(found: dict[str, list[Path]], gcide_entries: int) -> Iterator[tuple[str, list]]:
    for path in found["gcide"]:
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            yield from gcide_articles(f.read(), gcide_entries)
    for name in ("linux", "python"):
        for path in found[name]:
            title, body = rst_article(path.read_text(encoding="utf-8", errors="replace"))
            if body:
                yield title or path.name.removesuffix(".rst.txt"), body


# ------------------------------------------------------------------------------ writing


def _tokenized(article: tuple[str, list]) -> tuple[list[str], list[list[str]]]:
    title, body = article
    return tokenize(title), [[str(level)] + tokenize(text) for level, text in body]


def _lines(title: list[str], body: list[list[str]], keep) -> list[str]:
    """WikiText's lines: ' = Title = ', ' = = Section = = ', paragraphs; blank lines between."""
    out = [" = " + " ".join(map(keep, title)) + " = ", ""]
    for row in body:
        level, words = int(row[0]), [keep(w) for w in row[1:]]
        if not words:
            continue
        if level:
            marks = " ".join(["="] * min(level, 3))  # the title is level 1
            out += [f" {marks} " + " ".join(words) + f" {marks} ", ""]
        else:
            out += [" " + " ".join(words) + " ", ""]
    return [line + "\n" if line else " \n" for line in out]


def prepare(
    out: Path,
    root: Path = Path("/"),
    eval_words: int = 250_000,
    min_count: int = 3,
    seed: int = 0,
    gcide_entries: int = 200,
) -> dict[str, int]:
    """Write ``out/wiki.{train,valid,test}.tokens``; returns words (with ``<eos>`` lines not
    counted) per split and the vocabulary size."""
    found = find_sources(root)
    missing = [n for n, files in found.items() if not files]
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(missing)} under {root}: install the Debian packages with "
            f"`apt-get install {APT_PACKAGES}`"
        )
    docs = [_tokenized(a) for a in articles(found, gcide_entries)]
    random.Random(seed).shuffle(docs)
    splits: dict[str, list] = {"test": [], "valid": [], "train": []}
    sizes = dict.fromkeys(splits, 0)
    for doc in docs:
        words = sum(len(row) - 1 for row in doc[1]) + len(doc[0])
        split = next((s for s in ("test", "valid") if sizes[s] < eval_words), "train")
        splits[split].append(doc)
        sizes[split] += words
    counts = collections.Counter(
        w for title, body in splits["train"] for row in [title, *[r[1:] for r in body]]
        for w in row
    )  # fmt: skip
    vocab = {w for w, c in counts.items() if c >= min_count}

    def keep(w):
        return w if w in vocab else UNK

    out.mkdir(parents=True, exist_ok=True)
    for split, split_docs in splits.items():
        tmp = out / f"wiki.{split}.tokens.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(" \n")  # WikiText files open with a blank line
            for title, body in split_docs:
                f.writelines(_lines(title, body, keep))
        tmp.replace(out / f"wiki.{split}.tokens")
    return {**sizes, "vocab": len(vocab | {UNK, "="})}  # "=" marks headings
