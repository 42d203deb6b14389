"""jaxbd.files: the bytes the hand-written writers it replaced produced, atomicity, modes."""

import csv
import json
import os
import stat

import numpy as np
import pytest

from jaxbd import files

ROWS = [
    {"method": "craig", "seed": 0, "value": 0.125, "note": 'a "quoted", comma'},
    {"method": "random", "seed": 1, "value": None, "note": "±1 line\nbreak"},
]
COLUMNS = ("method", "seed", "value", "note")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_csv_gives_the_bytes_of_a_plain_dict_writer(tmp_path):
    # The report modules wrote their tables this way before; the bytes must not change.
    with open(tmp_path / "old.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(ROWS)
    files.write_csv(tmp_path / "new.csv", ROWS, COLUMNS)
    assert (tmp_path / "new.csv").read_bytes() == (tmp_path / "old.csv").read_bytes()


def test_write_json_and_text_give_the_bytes_of_the_old_writers(tmp_path):
    obj = {"b": [1, 2.5, float("nan")], "a": {"z": np.float32(0.5), "y": np.arange(2)}}
    files.write_json(tmp_path / "x.json", obj)
    expected = json.dumps(
        {"a": {"y": [0, 1], "z": 0.5}, "b": [1, 2.5, None]}, indent=2, sort_keys=True
    )
    assert (tmp_path / "x.json").read_text() == expected + "\n"
    text = "| a | b |\n| 1 ± 2 | 3 |\n"
    with open(tmp_path / "old.md", "w") as f:
        f.write(text)
    files.write_text(tmp_path / "new.md", text)
    assert (tmp_path / "new.md").read_bytes() == (tmp_path / "old.md").read_bytes()


def test_private_files_and_files_as_open_creates_them(tmp_path):
    files.write_text(tmp_path / "private.txt", "x")
    assert _mode(tmp_path / "private.txt") == 0o600
    files.write_text(tmp_path / "public.txt", "x", private=False)
    files.write_csv(tmp_path / "public.csv", ROWS, COLUMNS, private=False)
    with open(tmp_path / "opened.txt", "w") as f:
        f.write("x")
    assert _mode(tmp_path / "public.txt") == _mode(tmp_path / "opened.txt")
    assert _mode(tmp_path / "public.csv") == 0o666 & ~_umask()
    # `like` keeps a rewritten file's bits.
    os.chmod(tmp_path / "public.txt", 0o640)
    files.write_text(tmp_path / "public.txt", "y", like=str(tmp_path / "public.txt"))
    assert _mode(tmp_path / "public.txt") == 0o640
    assert not [n for n in os.listdir(tmp_path) if n.startswith(files.TMP_PREFIX)]


@pytest.mark.parametrize("private", [True, False])
def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path, private):
    path = tmp_path / "table.md"
    files.write_text(path, "old\n")
    with pytest.raises(RuntimeError), files.atomic_write(path, private=private) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["table.md"]
