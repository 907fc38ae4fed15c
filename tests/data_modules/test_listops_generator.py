"""The ListOps generator: labels, lengths, operator balance, structure, seeds and the CLI.

The trees are checked by an evaluator written here from LRA's description, reading the Source
string the way LRA's own ``to_value`` reads its nested pairs; nothing of the generator is reused.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data_modules.lra.listops import generate_dataset, main, tree_to_string, write_dataset

OPS = ("[MIN", "[MAX", "[MED", "[SM")
REPO = Path(__file__).resolve().parents[2]


def parse_pairs(source: str):
    """Parse LRA's ``( a b )`` pairs back into nested 2-tuples (strings at the leaves)."""
    tokens = source.split()
    position = 0

    def node():
        nonlocal position
        token = tokens[position]
        position += 1
        if token != "(":
            return token
        left, right = node(), node()
        assert tokens[position] == ")", f"expected ) at token {position} of {source!r}"
        position += 1
        return (left, right)

    tree = node()
    assert position == len(tokens), "trailing tokens"
    return tree


def lra_value(pair):
    """LRA's ``to_value``: (op, x) opens a list, (partial, x) extends it, (partial, ']') closes."""
    if isinstance(pair, str):
        return pair if pair in OPS or pair == "]" else int(pair)
    left, right = lra_value(pair[0]), lra_value(pair[1])
    if isinstance(left, str):  # an operator and its first argument
        return (left, [right])
    if right == "]":
        op, args = left
        if op == "[MIN":
            return min(args)
        if op == "[MAX":
            return max(args)
        if op == "[MED":
            return int(statistics.median(args))
        return sum(args) % 10
    return (left[0], left[1] + [right])


def read_rows(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "Source\tTarget"
    return [(source, int(target)) for source, target in (line.split("\t") for line in lines[1:])]


def test_example_from_the_format_notes() -> None:
    assert lra_value(parse_pairs("( ( ( ( [MAX 3 ) 4 ) 3 ) ] )")) == 4
    assert tree_to_string(("[MAX", (3, 4, 3))) == "( ( ( ( [MAX 3 ) 4 ) 3 ) ] )"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("listops")
    write_dataset(out, 1500, 150, 150, min_length=20, max_length=120, seed=7)
    return out


def test_labels_lengths_and_distinctness(generated: Path) -> None:
    sources = []
    for split, count in (("train", 1500), ("val", 150), ("test", 150)):
        rows = read_rows(generated / f"basic_{split}.tsv")
        assert len(rows) == count
        for source, target in rows:
            assert 0 <= target <= 9
            assert lra_value(parse_pairs(source)) == target
            length = sum(token not in ("(", ")") for token in source.split())
            assert 20 < length < 120
            sources.append(source)
    assert len(set(sources)) == len(sources)


def test_operators_in_even_proportion(generated: Path) -> None:
    counts = Counter(
        token
        for source, _ in read_rows(generated / "basic_train.tsv")
        for token in source.split()
        if token.startswith("[")
    )
    total = sum(counts.values())
    assert set(counts) == set(OPS) and total > 3000
    for op in OPS:
        # std of a share over > 3000 draws is < 0.8 %; 3 % is about four standard deviations
        assert abs(counts[op] / total - 0.25) < 0.03, counts


def test_depth_and_arity_limits() -> None:
    trees = generate_dataset(300, min_length=4, max_length=200, max_depth=3, max_args=4, seed=1)

    def check(tree, depth: int) -> None:
        if isinstance(tree, int):
            return
        assert depth < 3, "operators only above max_depth"
        assert 2 <= len(tree[1]) <= 4
        for child in tree[1]:
            check(child, depth + 1)

    for tree in trees:
        check(tree, 1)
        assert lra_value(parse_pairs(tree_to_string(tree))) is not None


def test_lra_default_lengths() -> None:
    trees = generate_dataset(5, seed=0)  # LRA's 500 < length < 2000, depth 10, 10 arguments
    for tree in trees:
        source = tree_to_string(tree)
        assert 500 < sum(t not in ("(", ")") for t in source.split()) < 2000


def test_seed_reproducible_and_distinct(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_dataset(tmp_path / name, 30, 5, 5, min_length=10, max_length=60, seed=seed)
    for split in ("train", "val", "test"):
        a, b, c = ((tmp_path / n / f"basic_{split}.tsv").read_bytes() for n in "abc")
        assert a == b
        assert a != c


def test_impossible_interval_raises() -> None:
    with pytest.raises(ValueError, match="strictly between"):
        generate_dataset(3, min_length=5, max_length=6)
    with pytest.raises(ValueError, match="only 10 distinct trees"):  # only single digits fit
        generate_dataset(11, min_length=0, max_length=2, max_failures=2000)


def test_cli_writes_official_files(tmp_path: Path, capsys) -> None:
    argv = ["generate", "--out", str(tmp_path), "--train", "12", "--val", "3", "--test", "4"]
    argv += ["--min-length", "8", "--max-length", "50", "--max-depth", "6", "--max-args", "5"]
    assert main(argv + ["--seed", "2"]) == 0
    assert "wrote 19 trees" in capsys.readouterr().out
    counts = [len(read_rows(tmp_path / f"basic_{s}.tsv")) for s in ("train", "val", "test")]
    assert counts == [12, 3, 4]


def test_cli_reports_bad_settings(tmp_path: Path, capsys) -> None:
    assert (
        main(["generate", "--out", str(tmp_path), "--min-length", "9", "--max-length", "10"]) == 2
    )
    assert "strictly between" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "data_modules.lra.listops", "generate", "--out", str(tmp_path)]
    command += [
        "--train",
        "4",
        "--val",
        "1",
        "--test",
        "1",
        "--min-length",
        "5",
        "--max-length",
        "30",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(read_rows(tmp_path / "basic_train.tsv")) == 4
