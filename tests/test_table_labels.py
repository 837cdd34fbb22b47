"""A table names the checkpoint its runs recorded, whatever checkpoint the rendering environment would pick."""
from __future__ import annotations

from benchmarks import records, table


def test_the_checkpoint_label_comes_from_the_runs_record(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "RESULTS", tmp_path)
    monkeypatch.delenv("AGMC_WEIGHTS_DIR", raising=False)
    config = table.preset("smoke")
    assert table._recorded_weights(config) == config.env_kwargs.get("weights")  # no run yet: the preset's
    method, seed = table.runs_of(config)[1]
    records.write(table._record_path(config, method, seed), {"weights": "/w/resnet56-jpeg.pt"})
    assert table._recorded_weights(config) == "/w/resnet56-jpeg.pt"
