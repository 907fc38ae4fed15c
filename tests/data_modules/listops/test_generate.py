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

from data_modules.lra.listops import generate_example, generate_examples, main, write_dataset

OPS = ("[MIN", "[MAX", "[MED", "[SM")
REPO = Path(__file__).resolve().parents[3]


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


def lra_nodes(pair):
    """Like ``lra_value`` but keeps the structure: ``(op, [children])`` with digits at the leaves."""
    if isinstance(pair, str):
        return pair if pair in OPS or pair == "]" else int(pair)
    left, right = lra_nodes(pair[0]), lra_nodes(pair[1])
    if isinstance(left, str):
        return [left, [right]]  # a list: still open
    if right == "]":
        return (left[0], left[1])  # a tuple: closed by "]"
    return [left[0], left[1] + [right]]


class ScriptedRandom:
    """Stands in for ``random.Random``: ``random()`` returns the scripted values in turn."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_example_from_the_format_notes() -> None:
    assert lra_value(parse_pairs("( ( ( ( [MAX 3 ) 4 ) 3 ) ] )")) == 4
    # root: 0.1 <= VALUE_P -> operator with 2 + int(0.15 * 9) = 3 children; each child: 0.9 >
    # VALUE_P -> digit int(u * 10); then the operator int(0.3 * 4) = 1 -> [MAX
    rng = ScriptedRandom([0.1, 0.15, 0.9, 0.35, 0.9, 0.45, 0.9, 0.35, 0.3])
    assert generate_example(rng) == ("( ( ( ( [MAX 3 ) 4 ) 3 ) ] )", 4, 5)
    assert rng.values == []
    # at max_depth no draw decides: the node is a digit
    assert generate_example(ScriptedRandom([0.7]), max_depth=1) == ("7", 7, 1)
    # the early rejection stops at the limit
    assert generate_example(ScriptedRandom([0.1, 0.15, 0.9, 0.35]), limit=3) is None


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
    examples = generate_examples(300, min_length=4, max_length=200, max_depth=3, max_args=4, seed=1)

    def check(node, depth: int) -> None:
        if isinstance(node, int):
            return
        assert depth < 3, "operators only above max_depth"
        assert 2 <= len(node[1]) <= 4
        for child in node[1]:
            check(child, depth + 1)

    for source, target in examples:
        check(lra_nodes(parse_pairs(source)), 1)
        assert lra_value(parse_pairs(source)) == target


def test_lra_default_lengths() -> None:
    for source, target in generate_examples(5, seed=0):  # LRA: 500 < length < 2000, 10, 10
        assert 500 < sum(t not in ("(", ")") for t in source.split()) < 2000
        assert lra_value(parse_pairs(source)) == target


def test_seed_reproducible_and_distinct(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_dataset(tmp_path / name, 30, 5, 5, min_length=10, max_length=60, seed=seed)
    for split in ("train", "val", "test"):
        a, b, c = ((tmp_path / n / f"basic_{split}.tsv").read_bytes() for n in "abc")
        assert a == b
        assert a != c


def test_impossible_interval_raises() -> None:
    with pytest.raises(ValueError, match="strictly between"):
        generate_examples(3, min_length=5, max_length=6)
    with pytest.raises(ValueError, match="only 10 distinct trees"):  # only single digits fit
        generate_examples(11, min_length=0, max_length=2, max_failures=2000)


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
    assert "Warning" not in result.stderr  # runpy warns if the package imported the module first
    assert len(read_rows(tmp_path / "basic_train.tsv")) == 4


def test_sharded_generation_depends_on_seed_and_shards_not_workers(tmp_path: Path) -> None:
    """LRA-size data in parallel: the same files whatever the number of processes, distinct
    trees across shards, and a manifest that names the shard count."""
    settings = dict(min_length=8, max_length=60, max_depth=5, max_args=4, seed=3, shards=3)
    write_dataset(tmp_path / "one", 20, 4, 5, workers=1, **settings)
    write_dataset(tmp_path / "two", 20, 4, 5, workers=2, **settings)
    for split in ("train", "val", "test"):
        one = (tmp_path / "one" / f"basic_{split}.tsv").read_bytes()
        assert one == (tmp_path / "two" / f"basic_{split}.tsv").read_bytes()
    rows = [
        r for s in ("train", "val", "test") for r in read_rows(tmp_path / "one" / f"basic_{s}.tsv")
    ]
    assert len(rows) == 29 and len({source for source, _ in rows}) == 29
    assert '"shards": 3' in (tmp_path / "one" / "listops_generator.json").read_text()
    single = write_dataset(tmp_path / "single", 20, 4, 5, **dict(settings, shards=1))
    assert "shards" not in single  # one stream: the manifest older data were written with
    assert (tmp_path / "single" / "basic_train.tsv").read_bytes() != (
        tmp_path / "one" / "basic_train.tsv"
    ).read_bytes()
