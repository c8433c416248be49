"""Trainers: one step against a float64 hand computation, learning on a V = 1,000 bandit, bit-for-bit resume,
the one-pass exactness of the ratio, config errors, the CLI and the presets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import log_softmax, softmax

from trustregion_lab.envs.bandit_problem import make_bandit_problem
from trustregion_lab.losses import DESIGN_METRICS
from trustregion_lab.train import VARIANTS, BanditConfig, BanditTrainer, SequenceConfig, SequenceTrainer
from trustregion_lab.train.base import ROW_COLUMNS, TIMING_COLUMNS
from trustregion_lab.train.batch import group_advantages
from trustregion_lab.train.cli import build_parser, main

REQUIRED_COLUMNS = [
    "variant",
    "method",
    "mismatch_mean",
    "mismatch_max",
    "mismatch_min",
    "grad_norm_max",
    "seed",
    "step",
    "reward",
    "entropy",
    "tv_exact",
    "kl_exact",
    "mismatch_k1",
    "mismatch_k3",
    "mask_frac",
    "mask_frac_pos",
    "mask_frac_neg",
    "ratio_clip_frac",
    "ratio_cap_frac",
    "grad_norm",
    "tokens_per_s",
]

TINY_BANDIT = {
    "vocab_size": 40,
    "num_contexts": 6,
    "contexts_per_step": 4,
    "group_size": 8,
    "correct_rank_max": 3,
    "family": "high_entropy",
}


def _reference_step(logits0, contexts, tokens, rollout_logprob, advantages, *, method, low, high, cap):
    """Float64 numpy loss and ∂loss/∂θ of the docs/design.md §2 surrogate (token-mean, one mini-batch, T = 1)."""
    logp = log_softmax(logits0.astype(np.float64)[contexts], axis=-1)
    probs = softmax(logits0.astype(np.float64)[contexts], axis=-1)
    rows = np.arange(len(contexts))
    lp_a = logp[rows, tokens]
    ratio = np.exp(lp_a - rollout_logprob)
    pi_a, mu_a = np.exp(lp_a), np.exp(rollout_logprob)
    if method == "ppo":
        up, down = ratio > 1 + high, ratio < 1 - low
    elif method == "dppo_binary_tv":
        up, down = pi_a - mu_a > high, pi_a - mu_a < -low
    else:
        up = down = np.zeros_like(ratio, dtype=bool)
    keep = ~(((advantages > 0) & up) | ((advantages < 0) & down))
    weight = advantages * np.minimum(ratio, cap) * keep
    loss = -(weight * lp_a).mean()
    grad = np.zeros_like(logits0, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[rows, tokens] = 1.0
    np.add.at(grad, contexts, -(weight[:, None] * (onehot - probs)) / len(contexts))
    return loss, grad, keep


@pytest.mark.parametrize(
    ("variant", "low", "high"),
    [("ppo", 0.004, 0.004), ("dppo_binary_tv", 0.002, 0.002), ("pg_is", None, None)],
)
def test_one_step_matches_float64_hand_computation(variant, low, high):
    config = BanditConfig(
        variant=variant,
        low=low,
        high=high,
        ratio_cap=1.02,
        num_minibatches=1,
        optimizer="sgd",
        lr=0.5,
        max_grad_norm=float("inf"),
        engine="bf16_noisy",
        seed=3,
        **TINY_BANDIT,
    )
    trainer = BanditTrainer(config)
    trainer.sampler.begin_step(0)
    batch = trainer.collect()
    contexts = batch.inputs
    logits0 = trainer.policy.logits.detach().clone().numpy()
    trainer.prepare(batch)
    metrics = trainer.update(batch)
    grad = (logits0 - trainer.policy.logits.detach().numpy()).astype(np.float64) / config.lr

    resolved = config.resolved_variant
    advantages = batch.advantages.numpy().astype(np.float64)
    assert (advantages != 0).any()
    ref_loss, ref_grad, keep = _reference_step(
        logits0,
        contexts.numpy(),
        batch.tokens[:, 0].numpy(),
        batch.rollout_logprob[:, 0].numpy().astype(np.float64),
        advantages,
        method=resolved.method,
        low=resolved.low,
        high=resolved.high,
        cap=config.ratio_cap,
    )
    if variant != "pg_is":
        assert not keep.all(), "the thresholds should make the mask drop some tokens"
    np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=2e-6)
    dropped = (~keep)[advantages != 0].mean()
    np.testing.assert_allclose(metrics["mask_frac"], dropped, atol=1e-12)


def test_group_advantages_match_numpy():
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, size=24).astype(np.float64)
    out = group_advantages(rewards, 6, "std")
    grouped = rewards.reshape(4, 6)
    expected = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, expected.ravel(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        group_advantages(rewards, 6, "mean"), (grouped - grouped.mean(1, keepdims=True)).ravel()
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_short_bandit_run_raises_the_correct_token_probability(variant):
    config = BanditConfig(
        variant=variant,
        vocab_size=1000,
        num_contexts=8,
        contexts_per_step=8,
        group_size=16,
        correct_rank_max=5,
        family="high_entropy",
        steps=12,
        lr=0.1,
        num_minibatches=2,
        engine="bf16",
        seed=1,
    )
    problem = make_bandit_problem(
        vocab_size=1000, num_contexts=8, num_correct=1, correct_rank_range=(2, 5), logit_family="high_entropy"
    )
    start = problem.expected_reward(softmax(problem.initial_logits.astype(np.float64), axis=-1)).mean()
    table = BanditTrainer(config).train()
    # the standard columns come first, in their documented order, each once; the required ones among them
    assert list(table.columns[: len(ROW_COLUMNS)]) == list(ROW_COLUMNS) and table.columns.is_unique
    assert set(REQUIRED_COLUMNS) <= set(ROW_COLUMNS)
    assert (table["variant"] == variant).all() and (table["method"] == VARIANTS[variant].method).all()
    assert table["step"].tolist() == list(range(1, 13))
    assert table["reward_expected"].iloc[-1] > 1.5 * start


def test_one_pass_without_mismatch_has_ratio_exactly_one():
    common = dict(num_minibatches=1, epochs=1, steps=4, vocab_size=200, correct_rank_max=4, seed=2)
    common["family"] = "high_entropy"
    for variant in ("ppo", "dppo_binary_tv", "dppo_exact_kl", "minirl"):
        table = BanditTrainer(BanditConfig(variant=variant, engine="none", **common)).train()
        assert (table["mismatch_mean"] == 0.0).all() and (table["mismatch_max"] == 0.0).all()
        assert (table["mismatch_k1"] == 0.0).all() and (table["chi2"] == 0.0).all()
        assert (table["tv_exact"] == 0.0).all()
        assert (table["mask_frac"].fillna(0.0) == 0.0).all()
        assert (table["ratio_clip_frac"].fillna(0.0) == 0.0).all()
    mismatched = BanditTrainer(BanditConfig(variant="ppo", engine="bf16", **common)).train()
    assert (mismatched["mismatch_k1"] != 0.0).all() and (mismatched["tv_exact"] > 0).all()
    reused = BanditTrainer(
        BanditConfig(variant="ppo", engine="none", **{**common, "num_minibatches": 4})
    ).train()
    assert (reused["tv_exact"] > 0).any()  # later mini-batches see π moved away from μ


def _comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=list(TIMING_COLUMNS))


@pytest.mark.parametrize(
    "overrides",
    [
        {"variant": "dppo_binary_tv", "engine": "moe"},
        {"variant": "minirl", "engine": "bf16", "staleness": 1},
    ],
)
def test_bandit_resume_reproduces_the_uninterrupted_run(tmp_path, overrides):
    config = BanditConfig(steps=6, checkpoint_every=2, **TINY_BANDIT, **overrides)
    uninterrupted = BanditTrainer(config).train()
    BanditTrainer(config).train(tmp_path, stop_after=3)  # "killed" after step 3; last checkpoint at step 2
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = BanditTrainer(config).train(tmp_path)
    pd.testing.assert_frame_equal(_comparable(resumed), _comparable(uninterrupted), check_exact=True)
    other = BanditConfig(**{**dataclasses.asdict(config), "lr": 0.2})
    with pytest.raises(ValueError, match="another config"):
        BanditTrainer(other).train(tmp_path)


def _tiny_sequence(tmp_path, **overrides) -> SequenceConfig:
    values = dict(
        task="copy",
        vocab_size=40,
        max_length=3,
        d_model=32,
        n_layers=1,
        n_heads=2,
        d_ff=64,
        prompts_per_step=4,
        group_size=4,
        num_minibatches=2,
        steps=4,
        warm_start_steps=30,
        warm_start_batch=32,
        engine="bf16",
        checkpoint_every=2,
        cache_dir=str(tmp_path / "cache"),
    )
    return SequenceConfig(**{**values, **overrides})


def test_sequence_resume_and_warm_start_cache(tmp_path):
    config = _tiny_sequence(tmp_path, variant="dppo_topk_tv")
    first = SequenceTrainer(config)
    assert first.warm_start_stats["cached"] == 0.0
    assert 0.0 <= first.warm_start_stats["start_reward_sampled"] <= 1.0
    uninterrupted = first.train()
    assert set(REQUIRED_COLUMNS) <= set(uninterrupted.columns)
    assert np.isfinite(
        uninterrupted[["reward", "entropy", "tv_exact", "kl_exact", "grad_norm"]].to_numpy()
    ).all()
    assert len(list((tmp_path / "cache").glob("warm_start-*.pt"))) == 1
    killed = SequenceTrainer(config)
    assert killed.warm_start_stats["cached"] == 1.0
    killed.train(tmp_path / "run", stop_after=3)
    resumed = SequenceTrainer(config).train(tmp_path / "run")
    pd.testing.assert_frame_equal(_comparable(resumed), _comparable(uninterrupted), check_exact=True)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (BanditConfig, {"lr": -0.1}, "lr"),
        (BanditConfig, {"group_size": 1}, "group_size"),
        (BanditConfig, {"variant": "trpo"}, "variant"),
        (BanditConfig, {"correct_rank_max": 2000}, "correct_rank_max"),
        (BanditConfig, {"ratio_cap": 0.0}, "ratio_cap"),
        (BanditConfig, {"bf16": True}, "bf16"),
        (BanditConfig, {"adam_beta2": 1.0}, "adam_beta2"),
        (BanditConfig, {"topk_rule": "top"}, "topk_rule"),
        (BanditConfig, {"engine": "vllm"}, "engine"),
        (BanditConfig, {"agg": "sum"}, "agg"),
        (BanditConfig, {"device": "gpu0"}, "device"),
        (SequenceConfig, {"task": "translate"}, "task"),
        (SequenceConfig, {"lr": float("nan")}, "lr"),
        (SequenceConfig, {"warm_start_noise": 1.5}, "warm_start_noise"),
    ],
)
def test_bad_config_raises_naming_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_config_type_errors_and_unknown_keys():
    with pytest.raises(TypeError, match="steps"):
        BanditConfig(steps=2.5)
    with pytest.raises(ValueError, match="unknown BanditConfig fields"):
        BanditConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="num_minibatches"):
        BanditConfig(num_minibatches=64, contexts_per_step=2, group_size=2, steps=1)


def test_cli_help_lists_every_field_and_rejects_bad_values(capsys, tmp_path):
    parser = build_parser()
    for command, cls in (("bandit", BanditConfig), ("sequence", SequenceConfig)):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in text
    with pytest.raises(SystemExit):
        main(["bandit", "--lr", "-1"])
    assert "lr must be > 0" in capsys.readouterr().err
    out = tmp_path / "table.csv"
    assert main(["bandit", "--steps", "2", "--vocab-size", "50", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 2 and set(REQUIRED_COLUMNS) <= set(table.columns)


def test_presets_compare_the_required_variants_with_and_without_mismatch():
    from trustregion_lab.train.presets import COMPARED_VARIANTS, PRESETS

    names = {p.name: p for p in PRESETS}
    assert {"bandit-train", "sequence-train", "stability", "stability-quick", "stability-search"} <= set(
        names
    )
    assert "stability-long" in names
    required = {"ppo", "ppo_clip_higher", "pg_is", "dppo_binary_tv", "dppo_binary_kl", "dppo_topk_tv"}
    required |= {"dppo_exact_tv", "minirl"}
    for preset in (names["bandit-train"], names["sequence-train"]):
        assert required <= set(preset.grid["variant"]) == set(COMPARED_VARIANTS)
        assert "none" in preset.grid["engine"] and len(preset.grid["engine"]) >= 2
    config = dict(names["bandit-train"].defaults)
    config.update(steps=2, vocab_size=100, variant="minirl")
    table = names["bandit-train"].run(config, 1)
    assert table["seed"].eq(1).all() and table["variant"].eq("minirl").all() and len(table) == 2
    assert set(DESIGN_METRICS) <= set(table.columns)


@pytest.mark.gpu
def test_trainers_run_on_cuda(tmp_path):
    table = BanditTrainer(BanditConfig(device="cuda", steps=2, **TINY_BANDIT)).train()
    assert np.isfinite(table["tv_exact"]).all()
    config = _tiny_sequence(tmp_path, device="cuda", bf16=True, steps=2, checkpoint_every=0)
    table = SequenceTrainer(config).train()
    assert np.isfinite(table["reward"]).all()


def test_every_row_carries_every_standard_column_without_gradient_tokens():
    class NoReward:  # every group all-zero: no token has Â ≠ 0
        def __init__(self, problem):
            self.problem = problem

        def clean_reward(self, contexts, actions):
            return np.zeros(np.shape(contexts))

        def __getattr__(self, name):
            return getattr(self.problem, name)

    trainer = BanditTrainer(BanditConfig(steps=2, vocab_size=50, engine="bf16"))
    trainer.problem = NoReward(trainer.problem)
    row = trainer.train_step()
    assert set(ROW_COLUMNS) <= set(row)
    assert np.isnan(row["mask_frac"]) and row["reward"] == 0.0
    assert np.isfinite(row["mismatch_mean"]) and row["grad_norm"] == 0.0


def test_cli_checks_output_paths_before_training(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["bandit", "--steps", "1", "--vocab-size", "50", "--out", str(folder)])
    assert exit_info.value.code == 2 and "is a folder" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["bandit", "--steps", "1", "--vocab-size", "50", "--checkpoint-dir", str(a_file)])
    assert exit_info.value.code == 2 and "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bandit", "--steps", "1", "--vocab-size", "50", "--bf16"])
    assert "only to CUDA" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"garbage", None])
def test_cli_rejects_a_garbage_or_truncated_checkpoint(tmp_path, capsys, content):
    run = tmp_path / "run"
    args = ["bandit", "--steps", "3", "--vocab-size", "50", "--checkpoint-dir", str(run)]
    if content is None:  # a real checkpoint cut in half
        assert main([*args[:2], "1", *args[3:]]) == 0
        data = (run / "checkpoint.pt").read_bytes()
        content = data[: len(data) // 2]
    run.mkdir(exist_ok=True)
    (run / "checkpoint.pt").write_bytes(content)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "not a trustregion_lab checkpoint or is truncated" in capsys.readouterr().err


def test_written_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        out = tmp_path / "t.csv"
        assert (
            main(
                [
                    "bandit",
                    "--steps",
                    "1",
                    "--vocab-size",
                    "50",
                    "--out",
                    str(out),
                    "--checkpoint-dir",
                    str(tmp_path / "c"),
                ]
            )
            == 0
        )
        assert (out.stat().st_mode & 0o777) == 0o644
        assert ((tmp_path / "c" / "checkpoint.pt").stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_an_error_while_training_is_a_traceback_not_a_bad_flag(monkeypatch):
    from trustregion_lab.train import step as step_lib

    def broken(*args, **kwargs):
        raise ValueError("numerics bug")

    monkeypatch.setattr(step_lib, "update", broken)
    with pytest.raises(ValueError, match="numerics bug"):
        main(["bandit", "--steps", "1", "--vocab-size", "50"])


def test_a_truncated_warm_start_cache_is_rebuilt_with_a_warning(tmp_path):
    config = _tiny_sequence(tmp_path, steps=1)
    first = SequenceTrainer(config)
    (cache_file,) = (tmp_path / "cache").glob("warm_start-*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = SequenceTrainer(config)
    assert again.warm_start_stats["cached"] == 0.0
    for a, b in zip(first.policy.parameters(), again.policy.parameters()):
        assert torch.equal(a, b)  # rebuilt bit for bit
    assert SequenceTrainer(config).warm_start_stats["cached"] == 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_model_engines_mismatch_at_the_warm_start_is_set_by_their_precision(tmp_path, seed):
    """Measured on this tiny model (seeds 0–3): exact TV(μ, π) per state 1.05e-3–1.32e-3 (bf16), 1.25e-4–1.43e-4
    (fp16), 6e-8–7.4e-8 (fp32: only the decode path differs). Bands with ≥ 3× margin on either side."""
    tv = {}
    for engine in ("model-bf16", "model-fp16", "model-fp32"):
        row = SequenceTrainer(_tiny_sequence(tmp_path, engine=engine, steps=1, seed=seed)).train_step()
        tv[engine] = row["tv_exact_start"]
        assert row["mismatch_mean"] <= 2 * tv[engine] + 1e-12  # |π(a) − μ(a)| ≤ 2·TV of the state
    assert 3e-4 <= tv["model-bf16"] <= 5e-3
    assert 3e-5 <= tv["model-fp16"] <= 6e-4
    assert tv["model-fp32"] <= 1e-6
    assert 3 <= tv["model-bf16"] / tv["model-fp16"] <= 30  # 3 fewer mantissa bits: ≈ 8×


def test_exact_engine_reports_the_trainers_own_logprobs(tmp_path):
    table = SequenceTrainer(_tiny_sequence(tmp_path, engine="none", steps=2, num_minibatches=1)).train()
    assert (table["mismatch_mean"] == 0).all() and (table["tv_exact_start"] == 0).all()
    assert (table["chi2"] == 0).all()  # one mini-batch: π = π_old = μ when the loss is evaluated


def test_model_engine_runs_resume_bit_for_bit_with_stale_engine_weights(tmp_path):
    config = _tiny_sequence(tmp_path, engine="model-bf16", staleness=1, variant="minirl", steps=4)
    uninterrupted = SequenceTrainer(config).train()
    SequenceTrainer(config).train(tmp_path / "run", stop_after=3)
    resumed = SequenceTrainer(config).train(tmp_path / "run")
    pd.testing.assert_frame_equal(_comparable(resumed), _comparable(uninterrupted), check_exact=True)
    again = SequenceTrainer(config).train()
    pd.testing.assert_frame_equal(_comparable(again), _comparable(uninterrupted), check_exact=True)


def test_verl_variant_divides_by_the_recomputed_policy(tmp_path):
    """verl's DPPO: ratio π/π_old, so on a single mini-batch every ratio is 1 even with a mismatched engine."""
    common = dict(engine="model-bf16", steps=2, num_minibatches=1)
    verl = SequenceTrainer(_tiny_sequence(tmp_path, variant="verl_dppo_tv", **common)).train()
    assert (verl["chi2"] == 0).all() and (verl["mismatch_k1"] == 0).all()
    assert (verl["mismatch_mean"] > 0).all()  # μ still differs from π: only the ratio ignores it
    rollout = SequenceTrainer(_tiny_sequence(tmp_path, variant="dppo_binary_tv", **common)).train()
    assert (rollout["chi2"] > 0).all()


def test_prompt_pool_is_at_intermediate_success_and_cached(tmp_path):
    config = _tiny_sequence(
        tmp_path, prompt_pool=8, pool_candidates=256, pool_samples=8, eval_prompts=8, eval_every=2, steps=2,
        task="reverse", max_length=4, min_length=3, warm_start_steps=60,
    )  # fmt: skip
    trainer = SequenceTrainer(config)
    pool = trainer.pool
    assert pool.prompts.shape == (8, trainer.task.prompt_length) and pool.eval_prompts.shape[0] == 8
    assert ((pool.success >= 0.2) & (pool.success <= 0.8)).all()
    np.testing.assert_array_equal(trainer.eval_prompts, pool.eval_prompts)
    held = {tuple(p) for p in pool.eval_prompts.tolist()}
    assert not held & {tuple(p) for p in pool.prompts.tolist()}
    batch = trainer.collect()
    trained = {tuple(p) for p in batch.inputs[:, : trainer.task.prompt_length].tolist()}
    assert trained <= {tuple(p) for p in pool.prompts.tolist()}
    table = trainer.train()
    assert table["eval_reward_sampled"].notna().sum() == 2  # steps 1 and 2
    assert len(list((tmp_path / "cache").glob("prompt_pool-*.pt"))) == 1
    np.testing.assert_array_equal(SequenceTrainer(config).pool.prompts, pool.prompts)


def test_export_tokens_writes_the_per_token_table(tmp_path):
    import pyarrow.parquet as pq

    trainer = SequenceTrainer(
        _tiny_sequence(tmp_path, steps=2, engine="model-bf16"), export_dir=tmp_path / "tokens"
    )
    table = trainer.train()
    files = sorted((tmp_path / "tokens").glob("*.parquet"))
    assert len(files) == 2
    frame = pq.read_table(files[0]).to_pandas()
    step1 = frame[frame["response_mask"]]
    assert {"rollout_logprob", "logprob", "advantage", "tv_exact", "topk_ids"} <= set(frame.columns)
    diff = np.abs(np.exp(step1["logprob"]) - np.exp(step1["rollout_logprob"])).mean()
    np.testing.assert_allclose(diff, table["mismatch_mean"].iloc[0], rtol=1e-5)


def test_every_task_field_of_the_config_reaches_the_task(tmp_path):
    config = _tiny_sequence(
        tmp_path, task="sort", max_length=4, min_length=2, num_symbols=5, scratch_length=3
    )
    config = dataclasses.replace(config, scratch_zipf=1.5, steps=1)
    task = SequenceTrainer(config).task
    assert (task.task, task.max_length, task.min_length, task.num_symbols) == ("sort", 4, 2, 5)
    assert (task.scratch_length, task.scratch_zipf) == (3, 1.5) and task.answer_length == 3 + 4 + 1


def test_exact_engine_with_staleness_reports_the_stale_weights_logprobs():
    config = BanditConfig(steps=4, engine="none", staleness=1, **TINY_BANDIT)
    trainer = BanditTrainer(config)
    table = trainer.train()
    assert table["mismatch_mean"].iloc[0] == 0.0  # step 1: the stale weights are the initial ones
    assert (table["mismatch_mean"].iloc[1:] > 0).all()
    # the next step's batch: μ must be the served (one step old) weights' softmax
    trainer.sampler.begin_step(trainer.step)
    batch = trainer.collect()
    trainer.prepare(batch)
    stale = torch.log_softmax(trainer.served(batch.inputs).double(), -1)
    want = stale.gather(-1, batch.tokens.long()).float()
    torch.testing.assert_close(batch.rollout_logprob, want, rtol=0, atol=1e-6)


def test_stability_presets_hold_the_papers_arms_and_both_engines():
    from trustregion_lab.train import stability
    from trustregion_lab.train.presets import PRESETS

    names = {p.name: p for p in PRESETS}
    study = names["stability"]
    assert set(study.grid["variant"]) >= {"pg_is", "cispo", "minirl", "dppo_binary_tv", "dppo_binary_kl"}
    assert set(study.grid["engine"]) == {"model-bf16", "model-fp32"} and study.seeds >= 3
    assert study.defaults["adv_norm"] == "mean" and study.defaults["num_minibatches"] == 4
    assert 16 <= study.defaults["scratch_length"] + study.defaults["max_length"] + 1 <= 32
    search = names["stability-search"]
    for cell in search.grid["search_cell"]:  # every cell is a valid configuration
        search.validate({**search.defaults, "search_cell": cell})
    assert len(search.grid["search_cell"]) == len(stability.SEARCH_CELLS)
    long = names["stability-long"]  # phase D: answers of 16–32 tokens, the verdict's arms, both engines
    assert set(long.grid["variant"]) == {"pg_is", "cispo", "minirl", "dppo_binary_tv", "dppo_binary_kl"}
    assert set(long.grid["engine"]) == {"model-bf16", "model-fp32"} and long.seeds >= 3
    lengths = [long.defaults["scratch_length"] + long.defaults[k] + 1 for k in ("min_length", "max_length")]
    assert lengths == [16, 32]
    assert {k: v for k, v in long.defaults.items() if k not in ("min_length", "max_length")} == {
        k: v for k, v in study.defaults.items() if k not in ("min_length", "max_length")
    }


# ------------------------------------------------------------------------- response mask and metric pooling
class _ScriptedSampler:
    """The trainer's sampler with the drawn tokens replaced by a script `[B, T]` (log μ(a) follows them)."""

    def __init__(self, inner, script: np.ndarray) -> None:
        self.inner, self.script, self.position = inner, script, 0

    def sample(self, logits: torch.Tensor):
        out = self.inner.sample(logits)
        tokens = torch.as_tensor(self.script[:, self.position], device=out.tokens.device)
        self.position += 1
        logprob = torch.log_softmax(out.engine_logits.float(), -1).gather(-1, tokens[:, None])[:, 0]
        return dataclasses.replace(out, tokens=tokens, logprob=logprob)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_sequence_response_mask_keeps_the_first_eos_and_drops_what_follows(tmp_path, rng):
    trainer = SequenceTrainer(
        _tiny_sequence(tmp_path, max_length=4, warm_start_steps=0, engine="none", steps=1)
    )
    task = trainer.task
    rows, length, eos = (
        trainer.config.prompts_per_step * trainer.config.group_size,
        task.answer_length,
        task.eos_id,
    )
    assert length >= 4
    script = rng.integers(0, task.vocab_size, (rows, length))
    script[script == eos] = eos + 1  # EOS only where placed below
    for row in range(4, rows):  # random first EOS (or none), sometimes a second one later
        first = int(rng.integers(0, length + 1))
        if first < length:
            script[row, first] = eos
            if first + 1 < length and rng.random() < 0.5:
                script[row, int(rng.integers(first + 1, length))] = eos
    script[1, 0] = eos  # EOS first: a one-token response
    script[2, length - 1] = eos  # EOS last
    script[3, [1, 3]] = eos  # a second EOS is padding like any other token after the first
    # row 0 has no EOS: decoding runs to the full answer length and the row is all response
    trainer.sampler = _ScriptedSampler(trainer.sampler, script)
    batch = trainer.collect()

    np.testing.assert_array_equal(batch.tokens.cpu().numpy(), script)
    want = np.zeros((rows, length), dtype=bool)
    for row in range(rows):  # by hand: every position up to and including the first EOS
        for position in range(length):
            want[row, position] = True
            if script[row, position] == eos:
                break
    np.testing.assert_array_equal(batch.response_mask.cpu().numpy(), want)
    assert want[0].all() and want[1].sum() == 1 and want[2].all() and want[3].sum() == 2


def _pooling_batch(rng: np.random.Generator, rows: int = 11, t: int = 10, v: int = 6):
    """Trainer logits (a leaf) `[rows, t, v]` and a RolloutBatch of unequal lengths, Â of both signs and 0."""
    from trustregion_lab.train.batch import RolloutBatch

    z = torch.nn.Parameter(torch.tensor(rng.normal(0, 1.5, (rows, t, v)), dtype=torch.float32))
    mu_logits = z.detach() + torch.tensor(rng.normal(0, 1.2, (rows, t, v)), dtype=torch.float32)
    log_mu = torch.log_softmax(mu_logits, -1)
    tokens = torch.tensor(rng.integers(0, v, (rows, t)))
    lengths = rng.integers(1, t + 1, rows)
    lengths[0] = 0  # an empty row
    advantages = np.abs(rng.normal(size=rows)) * rng.permutation(np.resize([1.0, -1.0], rows))
    advantages[1] = 0.0
    advantages[2:4] = np.abs(advantages[2:4]) * [1.0, -1.0]  # both signs among the non-empty rows
    ids = log_mu.topk(3, -1).indices
    batch = RolloutBatch(
        tokens=tokens,
        rollout_logprob=log_mu.gather(-1, tokens[..., None])[..., 0],
        rollout_logits=log_mu,
        topk_ids=ids,
        topk_logprobs=log_mu.gather(-1, ids),
        response_mask=torch.tensor(np.arange(t)[None, :] < lengths[:, None]),
        rewards=torch.zeros(rows),
        advantages=torch.tensor(advantages, dtype=torch.float32),
        inputs=torch.arange(rows),
    )
    return z, batch


@pytest.mark.parametrize(("method", "low", "high"), [("dppo_binary_tv", 0.05, 0.1), ("ppo", 0.1, 0.3)])
def test_update_pools_minibatch_metrics_into_whole_batch_token_means(rng, method, low, high):
    """11 rows in 3 mini-batches (4, 4, 3 rows; unequal token counts), weights frozen (lr 0): every token
    metric pools to its token-weighted mean over the whole batch, computed here in float64."""
    from tests import reference as ref
    from trustregion_lab.train.step import update
    from trustregion_lab.train.variants import Variant

    z, batch = _pooling_batch(rng)
    before = z.detach().clone()
    cap = 1.5
    config = BanditConfig(num_minibatches=3, epochs=1, **TINY_BANDIT)
    pooled = update(
        lambda rows: z[rows],
        batch,
        optimizer=torch.optim.SGD([z], lr=0.0),
        parameters=[z],
        config=config,
        variant=Variant(method, low, high, ratio_cap=cap),
        rng=np.random.default_rng(int(rng.integers(2**31))),
    )

    # inputs as the loss sees them: log π(a) from the float32 forward, everything after it in float64
    lp = torch.log_softmax(z.detach(), -1).gather(-1, batch.tokens[..., None])[..., 0].double().numpy()
    lmu = batch.rollout_logprob.double().numpy()
    resp = batch.response_mask.numpy()
    adv = np.broadcast_to(batch.advantages.double().numpy()[:, None], resp.shape)
    pos, neg = resp & (adv > 0), resp & (adv < 0)
    r = np.exp(lp - lmu)
    pi_a, mu_a = np.exp(lp), np.exp(lmu)
    if method == "ppo":
        drop = ref.ppo_drop(r, adv, low, high)
    else:
        drop = ref.divergence_drop(np.abs(pi_a - mu_a), pi_a, mu_a, adv, low, high)
    clip = ref.ppo_drop(r, adv, low, high) if method == "ppo" else ref.ppo_drop(r, adv, 0.2, 0.2)
    tv = ref.tv(batch.rollout_logits.double().numpy(), z.detach().double().numpy())
    kl = ref.kl(batch.rollout_logits.double().numpy(), z.detach().double().numpy())
    grad = pos | neg
    want = {
        "mask_frac": drop[grad].sum() / grad.sum(),
        "mask_frac_pos": drop[pos].sum() / pos.sum(),
        "mask_frac_neg": drop[neg].sum() / neg.sum(),
        "ratio_clip_frac": clip[grad].sum() / grad.sum(),
        "ratio_cap_frac": (r[resp] > cap).mean(),
        "mismatch_k1": np.mean(-np.log(r[resp])),
        "mismatch_k3": np.mean(r[resp] - 1 - np.log(r[resp])),
        "chi2": np.mean((r[resp] - 1) ** 2),
        "tv_exact": tv[resp].mean(),
        "kl_exact": kl[resp].mean(),
    }
    assert 0 < want["mask_frac"] < 1 and 0 < want["ratio_cap_frac"] < 1  # the batch exercises the rules
    for name, value in want.items():
        assert pooled[name] == pytest.approx(float(value), rel=1e-6, abs=1e-9), name
    assert torch.equal(z.detach(), before)  # lr 0: every mini-batch saw the weights the reference read


def test_metric_pool_is_the_weighted_mean_and_maximum_of_what_was_added(rng):
    from trustregion_lab.train.step import MetricPool

    values = rng.normal(size=12)
    weights = rng.integers(0, 5, 12).astype(float)  # zero weights are left out
    values[[2, 7]] = np.nan  # NaN values are left out
    pool = MetricPool(("mean", "max", "never"))
    for value, weight in zip(values, weights):
        pool.add("mean", float(value), float(weight))
        pool.max("max", float(value))
    keep = np.isfinite(values) & (weights > 0)
    out = pool.result()
    assert out["mean"] == pytest.approx((values[keep] * weights[keep]).sum() / weights[keep].sum(), rel=1e-12)
    assert out["max"] == np.nanmax(values)
    assert np.isnan(out["never"]) and list(out) == ["mean", "max", "never"]
