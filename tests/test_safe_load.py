"""Loading never runs code from disk: a pickle planted as a checkpoint, a warm-start cache or a prompt-pool cache
(its ``__reduce__`` would create a marker file) is refused with a one-line error or rebuilt with a warning, and
the marker never appears. Files of the older (pickled-object) formats are refused (checkpoint) or rebuilt
(caches)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from trustregion_lab.train import BanditConfig, BanditTrainer, SequenceConfig, SequenceTrainer
from trustregion_lab.train.base import CHECKPOINT_FORMAT, CheckpointError
from trustregion_lab.train.cli import main
from trustregion_lab.train.safe_load import UnsafeFileError

TINY_BANDIT = {"vocab_size": 40, "num_contexts": 6, "contexts_per_step": 4, "group_size": 4}


class _Armed:
    """Unpickling it calls open(marker, "w"): the file appears only if the loader runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path, **extra) -> None:
    """Overwrite ``path`` with a torch file holding an armed object, and check that it is armed."""
    torch.save({**extra, "payload": _Armed(marker)}, path)
    torch.load(path, weights_only=False)  # the old way: runs the payload
    assert marker.exists(), "the planted file must be armed for the test to mean anything"
    marker.unlink()


def _tiny_sequence(tmp_path: Path, **overrides) -> SequenceConfig:
    values = dict(
        task="copy", vocab_size=40, max_length=3, d_model=32, n_layers=1, n_heads=2, d_ff=64,
        prompts_per_step=4, group_size=4, num_minibatches=2, steps=1, warm_start_steps=20,
        warm_start_batch=32, engine="bf16", cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    return SequenceConfig(**{**values, **overrides})


def test_a_planted_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    _plant(run / "checkpoint.pt", marker, format=CHECKPOINT_FORMAT)
    trainer = BanditTrainer(BanditConfig(steps=2, **TINY_BANDIT))
    with pytest.raises(UnsafeFileError, match="holds more than tensors and plain types") as info:
        trainer.load_checkpoint(run / "checkpoint.pt")
    assert "\n" not in str(info.value) and not marker.exists()
    argv = ["bandit", "--steps", "2", "--vocab-size", "40", "--checkpoint-dir", str(run)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "nothing in it was run" in err
    assert not marker.exists()


def test_a_checkpoint_holds_only_tensors_and_plain_types_and_resumes_bit_for_bit(tmp_path):
    config = BanditConfig(steps=4, engine="bf16_noisy", staleness=1, checkpoint_every=1, **TINY_BANDIT)
    straight = BanditTrainer(config).train()
    BanditTrainer(config).train(tmp_path, stop_after=2)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # raises on anything else
    assert state["format"] == CHECKPOINT_FORMAT and state["step"] == 2
    assert len(state["stale"]["snapshots"]) == 2
    resumed = BanditTrainer(config).train(tmp_path)
    timing = ["tokens_per_s", "sample_tokens_per_s", "train_tokens_per_s", "time_s"]
    assert resumed.drop(columns=timing).equals(straight.drop(columns=timing))


def test_an_old_format_checkpoint_is_refused_with_a_clear_message(tmp_path):
    config = BanditConfig(steps=2, checkpoint_every=1, **TINY_BANDIT)
    BanditTrainer(config).train(tmp_path, stop_after=1)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    torch.save({**state, "format": "trustregion_lab.checkpoint/1"}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"older format trustregion_lab\.checkpoint/1 .* delete it"):
        BanditTrainer(config).load_checkpoint(tmp_path / "checkpoint.pt")


def test_a_planted_warm_start_cache_is_rebuilt_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    config = _tiny_sequence(tmp_path)
    first = SequenceTrainer(config)
    (cache_file,) = (tmp_path / "cache").glob("warm_start-*.pt")
    _plant(cache_file, marker, format="trustregion_lab.warm_start/2")
    with pytest.warns(
        RuntimeWarning, match="holds more than tensors and plain types.*rebuilding|rebuilding.*holds"
    ):
        again = SequenceTrainer(config)
    assert not marker.exists() and again.warm_start_stats["cached"] == 0.0
    for a, b in zip(first.policy.parameters(), again.policy.parameters(), strict=True):
        assert torch.equal(a, b)  # rebuilt bit for bit
    assert SequenceTrainer(config).warm_start_stats["cached"] == 1.0


def test_an_old_format_warm_start_cache_is_rebuilt_with_a_warning(tmp_path):
    config = _tiny_sequence(tmp_path)
    first = SequenceTrainer(config)
    (cache_file,) = (tmp_path / "cache").glob("warm_start-*.pt")
    stored = torch.load(cache_file, weights_only=True)
    del stored["format"]  # what the older version wrote
    torch.save(stored, cache_file)
    with pytest.warns(RuntimeWarning, match="older format"):
        again = SequenceTrainer(config)
    assert again.warm_start_stats["cached"] == 0.0
    for a, b in zip(first.policy.parameters(), again.policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_planted_prompt_pool_cache_is_rebuilt_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    config = _tiny_sequence(
        tmp_path, warm_start_steps=60, max_length=4, min_length=3, task="reverse", prompt_pool=8,
        pool_candidates=256, pool_samples=8, eval_prompts=8,
    )  # fmt: skip
    first = SequenceTrainer(config).pool
    (cache_file,) = (tmp_path / "cache").glob("prompt_pool-*.pt")
    stored = torch.load(cache_file, weights_only=True)
    assert set(stored["pool"]) == {"prompts", "success", "eval_prompts", "candidates_in_band", "candidates"}
    _plant(cache_file, marker, format="trustregion_lab.prompt_pool/2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = SequenceTrainer(config).pool
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("prompt-pool cache" in m and "holds more than tensors" in m for m in messages), messages
    assert not marker.exists()
    for name in ("prompts", "success", "eval_prompts"):
        assert (getattr(again, name) == getattr(first, name)).all()
    cached = SequenceTrainer(config).pool  # and the rebuilt file loads
    assert (cached.prompts == first.prompts).all() and cached.prompts.dtype == first.prompts.dtype
