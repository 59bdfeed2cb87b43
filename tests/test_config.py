from pathlib import Path

import pytest

from vitrine.config import Config, parse_assignments
from vitrine.errors import VitrineError


def test_defaults_then_file_then_overrides(tmp_path: Path):
    path = tmp_path / "vitrine.toml"
    path.write_text('[index]\nfactory = "HNSW16"\nef_search = 64\n[search]\nk = 20\n')
    config = Config.load(path, {"index.ef_search": "256", "embedding.image_weight": "0.7"})
    assert config.index.factory == "HNSW16"
    assert config.index.ef_search == 256
    assert config.search.k == 20
    assert config.embedding.image_weight == pytest.approx(0.7)
    assert Config().index.ef_search == 128  # defaults untouched


def test_save_and_load_round_trip(tmp_path: Path):
    config = Config.load(overrides={"encoders.batch_size": 8})
    config.save(tmp_path / "c.toml")
    assert Config.load(tmp_path / "c.toml") == config


@pytest.mark.parametrize("overrides, message", [
    ({"index.nope": 1}, "unknown setting 'index.nope'"),
    ({"nope.k": 1}, "unknown setting 'nope.k'"),
    ({"search.k": "ten"}, "search.k must be int"),
    ({"search.k": 2.5}, "search.k must be int"),
])
def test_bad_overrides_name_the_setting(overrides, message):
    with pytest.raises(VitrineError, match=message):
        Config.load(overrides=overrides)


def test_bad_toml_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[index\n")
    with pytest.raises(VitrineError, match="bad.toml: not valid TOML"):
        Config.load(path)


def test_parse_assignments():
    assert parse_assignments(["index.factory=HNSW32", "search.k = 5"]) == {"index.factory": "HNSW32", "search.k": "5"}
    with pytest.raises(VitrineError, match="KEY=VALUE"):
        parse_assignments(["index.factory"])
