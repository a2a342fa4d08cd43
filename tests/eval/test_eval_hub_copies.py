"""Parquet copies of the benchmarks, as downloaded from the dataset hub (conftest.py's ``*_copy_files``):
each reads to the same items as its native folder, from a ``--local-dir`` download or the hub cache,
its images fetched only when loaded; bad copies are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from seganswer_cli.errors import DataError
from seganswer_cli.eval import get_benchmark, hub_copies
from seganswer_cli.eval.items import LazyImage

#: benchmark name, split, repository, native fixture
CASES = [
    ("pope", "all", "lmms-lab/POPE", "pope_dir"),
    ("pope", "popular", "lmms-lab/POPE", "pope_dir"),
    ("hallusionbench", "image", "lmms-lab/HallusionBench", "hallusion_dir"),
    ("hallusionbench", "all", "lmms-lab/HallusionBench", "hallusion_dir"),
    ("mmbench", "dev", "lmms-lab/MMBench", "mmbench_dir"),
    ("hrbench-4k", "test", "DreamMr/HR-Bench", "hrbench_dir"),
    ("mmvp", "test", "lmms-lab-eval/MMVP", "mmvp_dir"),
    ("vstar", "all", "lmms-lab/vstar-bench", "vstar_dir"),
    ("vstar", "relative_position", "lmms-lab/vstar-bench", "vstar_dir"),
]


def described(item):
    """What must agree between the native reader and the copy (the image is a path in one, bytes in the other)."""
    return (item.id, item.question, item.prompt, item.answer, item.answer_kind, item.options, item.groups)


@pytest.mark.parametrize("layout", ["local-dir", "hub-cache"])
@pytest.mark.parametrize(("name", "split", "repo", "native"), CASES)
def test_copy_reads_to_the_native_items(name, split, repo, native, layout, tmp_path, request, hub):
    spec = get_benchmark(name)
    expected = spec.read(request.getfixturevalue(native), split)
    data = spec.read(hub.place(tmp_path / "copy", repo, hub.files[name](), layout), split)
    assert sorted(map(described, data.items)) == sorted(map(described, expected.items))
    assert data.missing == []
    with_image = [i for i in data.items if i.image is not None]
    assert with_image and all(isinstance(i.image, LazyImage) for i in with_image)
    assert with_image[0].load_image().size in {(8, 8), (64, 64)}


def test_same_order_as_the_native_files(pope_dir, tmp_path, hub):
    """POPE's copy lists adversarial first; items come setting by setting, as the question files give them."""
    native = get_benchmark("pope").read(pope_dir)
    copy = get_benchmark("pope").read(hub.place(tmp_path, "lmms-lab/POPE", hub.files["pope"](), "local-dir"))
    assert [i.id for i in copy.items] == [i.id for i in native.items]


def test_found_from_inside_the_copy_or_one_level_up(tmp_path, hub):
    root = hub.place(tmp_path / "downloads", "lmms-lab/POPE", hub.files["pope"](), "local-dir")
    for data in (root / "data", root.parent, root / "data" / "test-00000-of-00001.parquet"):
        assert len(get_benchmark("pope").read(data).items) == 6
    cache = hub.place(tmp_path / "cache", "lmms-lab/POPE", hub.files["pope"](), "hub-cache")
    assert len(get_benchmark("pope").read(cache / "snapshots").items) == 6


def test_shards_and_setting_files(tmp_path, hub):
    """POPE's ``Full`` config: one file per setting (the split in the file name), read together."""
    (table,) = hub.files["pope"]().values()
    by_setting = {
        f"Full/{setting}-00000-of-00001.parquet": {k: [v[n] for n in range(6) if table["category"][n] == setting]
                                                   for k, v in table.items()}
        for setting in ("adversarial", "popular", "random")
    }
    root = hub.place(tmp_path, "lmms-lab/POPE", by_setting, "local-dir")
    assert hub_copies.find_copy(root, ["Full/*.parquet"]) == sorted((root / "Full").glob("*.parquet"))
    assert [i.id for i in get_benchmark("pope").read(root, "random").items] == ["random-1", "random-2"]


def test_images_are_fetched_only_when_loaded(tmp_path, monkeypatch, hub):
    fetched = []
    column = hub_copies._parquet_column

    def counting(path, group, name):
        fetched.append((path, group, name))
        return column.__wrapped__(path, group, name)

    monkeypatch.setattr(hub_copies, "_parquet_column", counting)
    data = get_benchmark("pope").read(hub.place(tmp_path, "lmms-lab/POPE", hub.files["pope"](), "local-dir"))
    assert fetched == []  # reading the rows left the image column alone
    assert data.items[1].load_image().getpixel((0, 0)) == (80, 0, 0)  # random-2: question_id 2's colour
    assert len(fetched) == 1 and fetched[0][2] == "image"


def test_text_only_split_is_optional(tmp_path, hub):
    files = hub.files["hallusionbench"]()
    del files["data/non_image-00000-of-00001.parquet"]
    root = hub.place(tmp_path, "lmms-lab/HallusionBench", files, "local-dir")
    assert len(get_benchmark("hallusionbench").read(root, "all").items) == 5


def test_wrong_columns_name_expected_and_found(tmp_path, hub):
    root = tmp_path / "POPE"
    hub.write(root / "data" / "test-00000-of-00001.parquet", {"text": ["Is there a dog?"], "label": ["yes"]})
    with pytest.raises(DataError) as error:
        get_benchmark("pope").read(root)
    message = str(error.value)
    assert "not lmms-lab/POPE's parquet copy" in message and "\n" not in message
    assert "expected columns question_id, question, answer, category, image; found text, label" in message


@pytest.mark.parametrize("content", [b"", b"PAR1 this is not parquet"])
def test_empty_or_corrupt_file_is_one_line(tmp_path, content):
    path = tmp_path / "POPE" / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a readable parquet file") as error:
        get_benchmark("pope").read(tmp_path / "POPE")
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_copy_without_rows(tmp_path, hub):
    columns = {k: v[:0] for k, v in next(iter(hub.files["pope"]().values())).items() if k != "image"}
    hub.write(tmp_path / "data" / "test-00000-of-00001.parquet", {**columns, "image": []})
    with pytest.raises(DataError, match="no rows"):
        get_benchmark("pope").read(tmp_path)


def test_neither_native_nor_copy_names_both(tmp_path):
    with pytest.raises(DataError, match=r"coco_pope_random\.json.*nor lmms-lab/POPE's parquet copy"):
        get_benchmark("pope").read(tmp_path)


def test_bad_copies_are_one_line_through_the_executable(tmp_path, hub):
    bad = tmp_path / "BAD"
    hub.write(bad / "data" / "test-00000-of-00001.parquet", {"text": ["q"], "label": ["yes"]})
    corrupt = tmp_path / "CORRUPT"
    (corrupt / "data").mkdir(parents=True)
    (corrupt / "data" / "test-00000-of-00001.parquet").write_bytes(b"")
    for data, needle in ((bad, "expected columns question_id"), (corrupt, "not a readable parquet file")):
        out = subprocess.run(
            [sys.executable, "-m", "seganswer_cli", "eval", "pope", "--data", str(data), "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120,
        )
        assert out.returncode != 0 and needle in out.stderr, out.stderr
        assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
