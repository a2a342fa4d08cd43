"""--data NAME=PATH[:weight] parsing and weighted mixtures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from seganswer_cli.data import Mixture, open_mixture, parse_data_spec, parse_data_specs
from seganswer_cli.data.shapes_datasets import write_synthetic
from seganswer_cli.data.shapes_scenes import ShapesConfig
from seganswer_cli.errors import UsageError


def test_parse_data_spec_forms():
    spec = parse_data_spec("refcocog=/data/refer_seg:2.5")
    assert (spec.name, spec.path, spec.weight, spec.format) == ("refcocog", Path("/data/refer_seg"), 2.5, "refcocog")
    spec = parse_data_spec("mine=./shapes")
    assert (spec.name, spec.weight, spec.format) == ("mine", 1.0, None)
    assert parse_data_spec("./runs/shapes_a").name == "shapes_a"
    # a colon that is not followed by a number belongs to the path
    assert parse_data_spec("x=C:/data/set").path == Path("C:/data/set")


@pytest.mark.parametrize("bad", ["", "a=", "a=/p:0", "a=/p:-1", "a=/p:nan"])
def test_parse_data_spec_rejects(bad):
    with pytest.raises(UsageError):
        parse_data_spec(bad)


def test_duplicate_names_rejected():
    with pytest.raises(UsageError, match="given twice"):
        parse_data_specs(["a=/x", "a=/y:2"])


def test_mixture_follows_weights_and_is_seeded():
    mixture = Mixture([list(range(10)), list(range(100, 103))], [3.0, 1.0], names=["big", "small"], seed=0)
    draws = list(zip(range(4000), mixture.draw_indexed(), strict=False))
    counts = Counter(k for _, (k, _) in draws)
    assert counts[0] / 4000 == pytest.approx(0.75, abs=0.03)
    # each source is walked in shuffled epochs: every sample appears before any repeats
    small = [s for _, (k, s) in draws if k == 1]
    assert sorted(small[:3]) == [100, 101, 102]
    assert Mixture([[1, 2], [3]], [1, 1], seed=4).take(20) == Mixture([[1, 2], [3]], [1, 1], seed=4).take(20)
    with pytest.raises(UsageError, match="no samples"):
        Mixture([[1], []], [1, 1], names=["a", "b"])


def test_open_mixture_reads_folders(tmp_path):
    config = ShapesConfig(width=48, height=48, min_size=8, max_size=16)
    write_synthetic(tmp_path / "ref", "refseg", 3, config, seed=0)
    write_synthetic(tmp_path / "qa", "vqa", 2, config, seed=0)
    mixture, skipped = open_mixture(parse_data_specs([f"ref={tmp_path / 'ref'}:2", f"qa={tmp_path / 'qa'}"]))
    assert [len(s) for s in mixture.sources] == [3, 2]
    assert set(skipped) == {"ref", "qa"} and not skipped["ref"].skipped
    assert len(mixture.take(5)) == 5
