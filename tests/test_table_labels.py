"""A table names the checkpoint its runs recorded, whatever checkpoint the rendering environment would pick."""
from __future__ import annotations

import json

from benchmarks import table


def test_the_checkpoint_label_comes_from_the_runs_record(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "RUNS", tmp_path)
    monkeypatch.delenv("AGMC_WEIGHTS_DIR", raising=False)
    config = table.preset("smoke")
    assert table._recorded_weights(config) == config.env_kwargs.get("weights")  # no run yet: the preset's
    method, seed = table.runs_of(config)[1]
    folder = table.run_dir(config, method, seed)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"identity": {"env_kwargs": {"weights": "/w/resnet56-jpeg.pt"}}}))
    assert table._recorded_weights(config) == "/w/resnet56-jpeg.pt"
