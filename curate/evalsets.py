"""Eval sets in clip_benchmark's webdataset layout (DESIGN.md, "Eval sets").

EVAL/test/0.tar                                  {key}.png + {key}.cls (label) + {key}.txt (caption)
EVAL/classnames.txt                              line i names label i
EVAL/zeroshot_classification_templates.txt       one prompt per line, {c} for the class name
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence

from curate.fileio import atomic_open, filesystem, join
from curate.shards.writer import add_tar_member

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


def write_eval_set(
    folder: str,
    images: Sequence[bytes],
    labels: Sequence[int],
    captions: Sequence[str],
    classnames: Sequence[str],
    templates: Sequence[str],
    image_ext: str = "png",
) -> None:
    fs, path = filesystem(join(folder, "test"))
    fs.makedirs(path, exist_ok=True)
    with atomic_open(join(folder, "test/0.tar"), "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for index, (image, label, caption) in enumerate(zip(images, labels, captions, strict=True)):
            key = f"{index:07d}"
            add_tar_member(tar, f"{key}.{image_ext}", image)
            add_tar_member(tar, f"{key}.cls", str(label).encode())
            add_tar_member(tar, f"{key}.txt", caption.encode("utf-8"))
    with atomic_open(join(folder, CLASSNAMES_FILE), "w") as handle:
        handle.write("".join(f"{name}\n" for name in classnames))
    with atomic_open(join(folder, TEMPLATES_FILE), "w") as handle:
        handle.write("".join(f"{template}\n" for template in templates))
