"""Reading the Pathfinder release: metadata lines, PNG pixels (bad ones too), the seeded split."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_modules.common.errors import DataFormatError
from data_modules.lra.pathfinder import decode_png, parse_metadata_line, split_rows
from tests.data_modules.fixtures_c2 import png_bytes


def test_split_is_seeded_and_sizes_match_the_release() -> None:
    parts = split_rows(200_000, seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [160_000, 20_000, 20_000]
    assert all(np.array_equal(parts[s], split_rows(200_000, seed=0)[s]) for s in parts)
    assert not np.array_equal(parts["val"], split_rows(200_000, seed=1)["val"])


@pytest.mark.parametrize(
    "line, match",
    [
        (b"imgs/0 sample_0.png 0", "at least 4"),
        (b"imgs/0 sample_0.png 0 2 14", "label 0 or 1"),
        (b"imgs/0 sample_0.png 0 yes 14", "label 0 or 1"),
        (b"../etc sample_0.png 0 1", "imgs/<k> sample_<n>.png"),
        (b"imgs/0 ../../x.png 0 1", "imgs/<k> sample_<n>.png"),
        (b"", "at least 4"),
        (b"imgs/0 sampl\xe9_0.png 0 1", "at least 4"),
    ],
)
def test_malformed_metadata_line(line: bytes, match: str) -> None:
    with pytest.raises(DataFormatError, match=match) as info:
        parse_metadata_line(line, Path("metadata/7.npy"), 12)
    assert info.value.path == "metadata/7.npy" and info.value.line_or_record == 12


def test_png_checks(tmp_path: Path) -> None:
    gray = np.arange(1024, dtype=np.uint16).reshape(32, 32) % 256
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(gray.astype(np.uint8)))
    assert decode_png(path, 32).tolist() == (np.arange(1024) % 256).tolist()
    path.write_bytes(png_bytes(gray.astype(np.uint8), mode="RGB"))  # gray content in RGB: fine
    assert decode_png(path, 32).tolist() == (np.arange(1024) % 256).tolist()
    colour = np.zeros((32, 32, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    path.write_bytes(png_bytes(colour, mode="RGB"))
    with pytest.raises(DataFormatError, match="colour RGB image"):
        decode_png(path, 32)
    path.write_bytes(png_bytes(gray[:16].astype(np.uint8)))
    with pytest.raises(DataFormatError, match="32x16 pixels"):
        decode_png(path, 32)
    with pytest.raises(DataFormatError, match="no such file"):
        decode_png(tmp_path / "missing.png", 32)


@settings(max_examples=80, deadline=None)
@given(line=st.binary(max_size=60))
def test_arbitrary_metadata_lines_parse_or_raise_our_error(line: bytes) -> None:
    try:
        folder, name, label = parse_metadata_line(line, Path("m/0.npy"), 1)
    except DataFormatError:
        return
    assert folder.startswith("imgs/") and name.endswith(".png") and label in (0, 1)


@settings(max_examples=80, deadline=None)
@given(cut=st.integers(0, 2000), noise=st.binary(max_size=30), at=st.integers(0, 2000))
def test_damaged_png_bytes_decode_or_raise_our_error(cut: int, noise: bytes, at: int) -> None:
    pixels = (np.arange(1024) * 7 % 256).astype(np.uint8).reshape(32, 32)
    data = png_bytes(pixels)
    at = min(at, len(data))
    damaged = (data[:at] + noise + data[at + len(noise) :])[
        : max(cut, 1) if cut < len(data) else None
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample_0.png"
        path.write_bytes(damaged)
        try:
            out = decode_png(path, 32)
        except DataFormatError as error:
            assert error.path == str(path)
            return
    assert out.shape == (1024,) and out.dtype == np.uint8
