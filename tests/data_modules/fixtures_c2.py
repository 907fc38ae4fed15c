"""Tiny files in the official formats of WikiText-103, CIFAR-10 (binary) and Pathfinder.

Plain writer functions (no pytest fixtures), shared by test_wikitext.py, test_image.py and
test_pathfinder.py.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------------
# WikiText-103: real English laid out as wiki.*.tokens (Moses-tokenised, " = Title = " headings,
# @-@ / @,@ / @.@ number splits, <unk>, blank lines " \n", every line starting with a space).
# --------------------------------------------------------------------------------------------

WIKI_TRAIN = (
    " \n"
    " = Harbour Lighthouse = \n"
    " \n"
    " The Harbour Lighthouse is a 19th @-@ century lighthouse on the northern breakwater of the "
    "port . It was first lit on 12 March 1868 , and its lamp could be seen from a distance of "
    "14 @.@ 5 nautical miles ( 26 @.@ 9 km ) . \n"
    " \n"
    " = = History = = \n"
    " \n"
    " Plans for a light on the breakwater were drawn up in 1861 by the engineer <unk> Stevenson , "
    "who estimated the cost at £ 4 @,@ 250 . Construction was delayed by storms , and the tower "
    "was not completed until the winter of 1867 . \n"
    " \n"
    " = = Design = = \n"
    " \n"
    " The tower is 21 metres ( 69 ft ) tall and built of granite . Its lantern , made in Glasgow "
    ", held a fixed white light that was replaced by an electric lamp in 1921 . \n"
    " \n"
)
WIKI_VALID = (
    " \n"
    " = Old Mill = \n"
    " \n"
    " The mill was built of granite in 1861 and closed in the winter of 1921 . \n"
    " \n"
)
WIKI_TEST = (
    " \n"
    " = = Legacy = = \n"
    " \n"
    " Its lamp is now kept in a museum in Glasgow , where it is lit each March . \n"
)


def write_wikitext(
    folder: Path, train: str = WIKI_TRAIN, valid: str = WIKI_VALID, test: str = WIKI_TEST
) -> Path:
    """``folder/wikitext-103/wiki.{train,valid,test}.tokens``; ``str`` is UTF-8 encoded."""
    target = folder / "wikitext-103"
    target.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        data = text.encode("utf-8") if isinstance(text, str) else text
        (target / f"wiki.{split}.tokens").write_bytes(data)
    return target


def reference_tokens(path: Path) -> list[str]:
    """Transformer-XL's reading, written the slow obvious way: text-mode lines, split, <eos>."""
    tokens: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            tokens.extend(line.split() + ["<eos>"])
    return tokens


def reference_vocab(train_path: Path) -> list[str]:
    """Transformer-XL's ``Vocab.build_vocab`` for WikiText-103: <eos>, then ``most_common``."""
    counter = Counter()
    with open(train_path, encoding="utf-8") as handle:
        for line in handle:
            counter.update(line.split() + ["<eos>"])
    return ["<eos>"] + [word for word, _ in counter.most_common() if word != "<eos>"]


# --------------------------------------------------------------------------------------------
# CIFAR-10 binary release: records of 1 label byte + 1024 R + 1024 G + 1024 B bytes.
# --------------------------------------------------------------------------------------------

CIFAR_RECORD = 1 + 3 * 1024
CIFAR_TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR_TEST_FILE = "test_batch.bin"


def cifar_records(labels: Sequence[int], seed: int) -> tuple[bytes, np.ndarray]:
    """``(file bytes, rgb)`` for images with the given labels; ``rgb`` is (n, 32, 32, 3) uint8."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    for label, image in zip(labels, rgb, strict=True):
        out.write(bytes([label]))
        out.write(np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes())  # R, G, B planes
    return out.getvalue(), rgb


def write_cifar(folder: Path, per_batch: int = 4, n_test: int = 3) -> dict:
    """``folder/cifar-10-batches-bin/`` with 5 train batches and a test batch.

    Returns ``{"train": (labels, rgb), "test": (labels, rgb)}`` in file order.
    """
    target = folder / "cifar-10-batches-bin"
    target.mkdir(parents=True, exist_ok=True)
    labels_all, rgb_all = [], []
    for index, name in enumerate(CIFAR_TRAIN_FILES):
        labels = [(index * per_batch + k) % 10 for k in range(per_batch)]
        data, rgb = cifar_records(labels, seed=index)
        (target / name).write_bytes(data)
        labels_all.extend(labels)
        rgb_all.append(rgb)
    test_labels = [(7 * k + 3) % 10 for k in range(n_test)]
    data, test_rgb = cifar_records(test_labels, seed=99)
    (target / CIFAR_TEST_FILE).write_bytes(data)
    (target / "batches.meta.txt").write_text(
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n"
    )
    return {
        "train": (np.asarray(labels_all), np.concatenate(rgb_all)),
        "test": (np.asarray(test_labels), test_rgb),
    }


# --------------------------------------------------------------------------------------------
# Pathfinder: imgs/<k>/sample_<n>.png (8-bit grayscale) and TEXT metadata/<k>.npy files.
# --------------------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format="PNG")
    return out.getvalue()


def metadata_line(k: int, n: int, label: int | str) -> str:
    """One line as the generator writes it: imgs/<k> sample_<n>.png <n> <label> + parameters."""
    return f"imgs/{k} sample_{n}.png {n} {label} 14 1.5 1 2 0.75\n"


def write_pathfinder(
    folder: Path,
    per_file: Sequence[int] = (4, 3, 5),
    resolution: int = 32,
    difficulty: str = "curv_contour_length_14",
    seed: int = 0,
) -> tuple[Path, list[tuple[int, int, np.ndarray]]]:
    """``folder/lra_release/lra_release/pathfinder<res>/<difficulty>/`` with len(per_file) folders.

    Metadata file ``i`` lists ``per_file[i]`` images. The files are named 0.npy, 2.npy, 10.npy,
    11.npy, ... (images in ``imgs/0``, ``imgs/2``, ...) so that sorting by integer stem
    (0, 2, 10) differs from sorting by name (0, 10, 2). Returns ``(lra_release folder, [(label, k, pixels)] in metadata order)``.
    """
    rng = np.random.default_rng(seed)
    task = folder / "lra_release" / "lra_release" / f"pathfinder{resolution}" / difficulty
    (task / "metadata").mkdir(parents=True, exist_ok=True)
    rows = []
    stems = [0, 2, 10, 11, 12, 13][: len(per_file)]
    for stem, count in zip(stems, per_file, strict=True):
        (task / "imgs" / str(stem)).mkdir(parents=True, exist_ok=True)
        lines = []
        for n in range(count):
            pixels = rng.integers(0, 256, size=(resolution, resolution), dtype=np.uint8)
            label = int(rng.integers(0, 2))
            (task / "imgs" / str(stem) / f"sample_{n}.png").write_bytes(png_bytes(pixels))
            lines.append(metadata_line(stem, n, label))
            rows.append((label, stem, pixels))
        (task / "metadata" / f"{stem}.npy").write_text("".join(lines))
    return folder / "lra_release", rows
