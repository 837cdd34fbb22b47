"""A table's rows: each row's settings are a valid search, a row kept to some grids is not planned in others, and the
grids' weights path holds in any working directory."""
from __future__ import annotations

import pytest

from agents.run_folder import SearchConfig
from benchmarks import table


@pytest.mark.parametrize("method", [m for m in table.METHODS if m.kind == "search"], ids=lambda m: m.name)
def test_every_search_row_is_a_search_config(method):
    config = SearchConfig("AGMCTest-Tiny-v0", method.algo, method.embedding, **dict(method.search))
    assert all(getattr(config, k) == v for k, v in method.search)


def test_a_row_kept_to_some_grids_is_planned_only_there():
    kept = [m for m in table.METHODS if m.grids]
    assert kept, "no row is kept to some grids: this test checks nothing"
    for m in kept:
        for name in ("smoke", "resnet20_flops50", "resnet56_flops50"):
            config = table.preset(name)
            planned = {p.name for p, _ in table.runs_of(config)}
            assert (m.name in planned) == (name in m.grids)
            assert (m in table.methods_of(config)) == (name in m.grids)


def test_the_jpeg_weights_path_is_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    """Ray runs each trial in its own working directory: a relative $AGMC_WEIGHTS_DIR would point nowhere there."""
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "resnet20-cifar10jpeg.pt").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGMC_WEIGHTS_DIR", "w")
    assert table._jpeg_weights("resnet20") == {"weights": str(tmp_path / "w" / "resnet20-cifar10jpeg.pt")}
