"""An image folder: root/{train,test or val}/<class>/*, or root/<class>/* with a held-out test split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from extract.datasets.files import files_dataset, held_out_note, hold_out, images_under
from extract.datasets.images import IMAGE_EXTENSIONS
from extract.datasets.splits import TEST_SPLIT_NAMES, Dataset
from extract.datasets.tables import CSV_SUFFIXES
from extract.errors import UsageError


def _class_folders(split_dir: Path, root: Path, left_out: Counter) -> dict[str, list[str]]:
    """Class name -> its image files, as paths relative to the dataset's root; other files counted in `left_out`."""
    classes = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[class_dir.name] = sorted(str(f.relative_to(root)) for f in images_under(class_dir, left_out))
    return classes


def _left_out_note(left_out: Counter) -> str:
    if not left_out:
        return ""
    kinds = ", ".join(f"{suffix} ({count})" for suffix, count in sorted(left_out.items(), key=lambda x: (-x[1], x[0])))
    return f"left out {left_out.total()} files that are not images this tool reads: {kinds}"


def _check_classes(classes: dict[str, list[str]], where: Path) -> None:
    if len(classes) < 2:
        loose = sum(1 for path in images_under(where) if path.parent == where)
        if loose:  # a plain folder of photos: say how to label them, and where unlabelled ones are embedded
            raise UsageError(f"{where} holds {loose} images but {len(classes)} class folder(s): put each class's "
                             f"images in a folder of its own ({where}/<class>/), or list them in a CSV table "
                             "(image,label); features of unlabelled images: Extractor.image_features, README "
                             "'From Python'")
        raise UsageError(f"{where} holds {len(classes)} class folder(s); a classifier needs at least 2")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise UsageError(f"class folder(s) {', '.join(empty)} in {where} hold no images "
                         f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")


def folder_dataset(root: Path, limit_per_class: int | None) -> Dataset:
    """root/{train,test or val}/<class>/*; or, without a test split, root/train/<class>/* or root/<class>/* with
    a held-out test split (`hold_out`)."""
    if root.is_file():
        tables = " or ".join("*" + suffix for suffix in CSV_SUFFIXES)
        raise UsageError(f"{root} is a file, not a dataset folder; give a folder of class folders (or with train/ and "
                         f"test/ inside), or a table of image,label rows named {tables}")
    if not root.is_dir():
        raise UsageError(f"dataset folder {root} does not exist; give a folder of class folders, or with train/ and "
                         "test/ inside")
    test_name = next((n for n in TEST_SPLIT_NAMES if (root / n).is_dir()), None)
    notes, left_out = [], Counter()
    if (root / "train").is_dir() and test_name:
        train, test = _class_folders(root / "train", root, left_out), _class_folders(root / test_name, root, left_out)
        if set(train) != set(test):
            only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            raise UsageError(f"class folders differ between train/ and {test_name}/ in {root} "
                             f"(only in train: {only_train or '-'}; only in {test_name}: {only_test or '-'}); "
                             "make both hold the same class folders")
        _check_classes(train, root / "train")
        _check_classes(test, root / test_name)
    elif test_name:
        raise UsageError(f"{root} has a {test_name}/ but no train/ folder; add train/ with one folder per class")
    else:
        labelled = root / "train" if (root / "train").is_dir() else root
        classes = _class_folders(labelled, root, left_out)
        _check_classes(classes, labelled)
        train, test = hold_out(classes)
        notes.append(held_out_note(f"no test/ or val/ folder in {root}"))
    notes.append(_left_out_note(left_out))
    return files_dataset(root.resolve().name, root, train, test, limit_per_class, notes)
