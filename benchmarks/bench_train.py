"""Benchmark: the sequence trainer's sampling and training throughput at 24-token answers.

Same run, same warm-started model, same engine and batch, interleaved rounds, medians:
- baseline: the full-forward decode (every step recomputes ``model(sequence)[:, -1]`` over the whole growing
  sequence, then the engine samples from those logits), the trainer's decode before KV caching;
- KV cache: ``SequenceTrainer.collect()`` (the engine's own incremental decode, one position per step);
- the whole step (collect, prepare, update, after: the trainer's ``train_step`` without its evaluation), from the
  same weights, optimiser state, generator state and engine step, by two paths in alternation:
  old = the code before the speed-ups, reproduced here: the LM head on every position of the sequence (then
  sliced to the answer), the step's equal-weight entropy from a float64 log-softmax, every exact TV/KL from
  logits (each recomputing its log-softmaxes: start, each mini-batch, after) and the after-step forward on every
  step; new = the trainer's own methods: the head on the answer positions only
  (``DecoderTransformer.forward(tokens, start=...)``), each log-softmax of the step computed once
  (``RolloutBatch.rollout_logp`` / ``old_logp``, ``divergence.exact_tv_kl_logp``), and with ``--dose-every N``
  the after-step forward counted on 1 step in N (``TrainConfig.dose_every``). Per phase and in total, medians.
  "training" is prepare + update of the same rounds.
The sampled tokens and rewards must be bit-identical between the paths; the loss and weights differ by float
rounding only because the old head runs its GEMMs at other shapes (bit-identity with the code before the
log-softmax reuse is tested in tests/test_train_speed.py). Both paths run in one process after the trainer's
``keep_freed_memory`` (glibc keeps freed step tensors instead of faulting them in again; minor page faults per
step are printed), so the ratio leaves most of that gain out (the old path still faults its tensors above 32 MiB): compare the new path's time with a process of the code
before it to see it. Throughput is answer tokens per second (valid response tokens; training counts each token
once per epoch).

    python benchmarks/bench_train.py                       # reverse, L = 23 (24-token answers), fp32 engine
    python benchmarks/bench_train.py --engine model-bf16   # the bf16 model engine
    python benchmarks/bench_train.py --stability           # the stability preset's step (sort, its warm start)
    python benchmarks/bench_train.py --stability --dose-every 5   # also the step with the dose on 1 step in 5
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import resource
import statistics
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import torch

from trustregion_lab import divergence
from trustregion_lab.losses import DESIGN_METRICS, policy_loss
from trustregion_lab.train import SequenceConfig, SequenceTrainer
from trustregion_lab.train import step as step_lib
from trustregion_lab.train.batch import RolloutBatch
from trustregion_lab.train.stability import STABILITY_SETTINGS


@torch.no_grad()
def old_start_metrics(batch: RolloutBatch) -> dict[str, float]:
    """``step.start_metrics`` before the speed-up: the entropy from a float64 log-softmax of every state."""
    mask = batch.response_mask
    if batch.old_logits is None or batch.old_logprob is None or not bool(mask.any()):
        return dict.fromkeys(step_lib.START_METRICS, math.nan)
    lp, lmu = batch.old_logprob.double()[mask], batch.rollout_logprob.double()[mask]
    diff = lp.exp() - lmu.exp()
    log_r = lp - lmu
    w = torch.exp(log_r - log_r.max())
    tv, kl = divergence.exact_tv_kl(batch.rollout_logits[mask], batch.old_logits[mask])
    logp = torch.log_softmax(batch.old_logits[mask].double(), -1)
    return {
        "mismatch_mean": float(diff.abs().mean()),
        "mismatch_max": float(diff.max()),
        "mismatch_min": float(diff.min()),
        "mismatch_k3_start": float((torch.expm1(log_r) - log_r).clamp(min=0).mean()),
        "ess_start": float(w.sum() ** 2 / (w.numel() * (w**2).sum())),
        "tv_exact_start": float(tv.double().mean()),
        "kl_exact_start": float(kl.double().mean()),
        "entropy": float(-(logp.exp() * logp).sum(-1).mean()),
    }


@torch.no_grad()
def old_prepare(trainer: SequenceTrainer, batch: RolloutBatch) -> dict[str, float]:
    """``Trainer.prepare`` before the speed-ups: the head on every position, no log-softmax kept on the batch."""
    logits = old_logits(trainer, batch.inputs).float()
    batch.old_logits = logits
    batch.old_logprob = torch.log_softmax(logits, -1).gather(-1, batch.tokens.unsqueeze(-1)).squeeze(-1)
    if trainer.engine.exact:
        served = logits if trainer.config.staleness == 0 else trainer.served_logits(batch.inputs).float()
        trainer.exact_engine_report(batch, served)
    batch.rollout_logp = batch.old_logp = None
    return old_start_metrics(batch)


def old_logits(trainer: SequenceTrainer, inputs: torch.Tensor) -> torch.Tensor:
    """The LM head on every position of the sequence, then sliced to the answer (before ``forward(start=)``)."""
    return trainer.policy(inputs)[:, trainer.task.prompt_length - 1 :]


def old_update(trainer: SequenceTrainer, batch: RolloutBatch) -> dict[str, float]:
    """``step.update`` before the speed-ups: the exact TV/KL of each mini-batch from logits (its own log-softmaxes)."""
    config, variant = trainer.config, trainer.variant
    parameters = [p for p in trainer.policy.parameters() if p.requires_grad]
    pool = step_lib.MetricPool(step_lib.UPDATE_METRICS)
    for _ in range(config.epochs):
        for chunk in np.array_split(trainer.rng.permutation(batch.num_rows), config.num_minibatches):
            rows = torch.from_numpy(np.sort(chunk)).to(batch.tokens.device)
            mb = batch.rows(rows)
            logits = old_logits(trainer, batch.inputs[rows]).float()
            logprob = torch.log_softmax(logits, -1).gather(-1, mb.tokens.unsqueeze(-1)).squeeze(-1)
            loss, metrics = policy_loss(
                variant.method,
                logprob=logprob,
                rollout_logprob=mb.old_logprob if variant.ratio == "recompute" else mb.rollout_logprob,
                advantages=mb.advantages,
                response_mask=mb.response_mask,
                low=variant.low,
                high=variant.high,
                ratio_cap=variant.ratio_cap,
                agg=variant.agg or config.agg,
                log_ratio_penalty=variant.log_ratio_penalty,
                logits=logits,
                **mb.mask_inputs(variant.anchor),
            )
            trainer.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm))
            trainer.optimizer.step()
            for name in DESIGN_METRICS:
                weight = metrics[step_lib._POOLING_WEIGHT[name]] if name in step_lib._POOLING_WEIGHT else 1.0
                pool.add(name, metrics[name], weight)
            with torch.no_grad():
                valid = mb.response_mask
                tv, kl = divergence.exact_tv_kl(mb.rollout_logits[valid], logits.detach()[valid])
                pool.add("tv_exact", float(tv.double().mean()) if tv.numel() else math.nan, tv.numel())
                pool.add("kl_exact", float(kl.double().mean()) if kl.numel() else math.nan, kl.numel())
            pool.add("grad_norm", grad_norm)
            pool.max("grad_norm_max", grad_norm)
            pool.add("loss", float(loss.detach()))
    return pool.result()


@torch.no_grad()
def old_after_metrics(trainer: SequenceTrainer, batch: RolloutBatch) -> dict[str, float]:
    """``step.after_metrics`` before the speed-ups (head on every position, TV from both sets of logits)."""
    mask = batch.response_mask
    logits = old_logits(trainer, batch.inputs).float()[mask]
    picked = logits.gather(-1, batch.tokens[mask].unsqueeze(-1)).squeeze(-1)
    log_pi = picked.double() - torch.logsumexp(logits, -1).double()
    ratio = torch.exp(log_pi - batch.rollout_logprob[mask].double())
    low, high = step_lib.DOSE_BAND
    outside = (ratio < low) | (ratio > high)
    tv = divergence.tv(batch.rollout_logits[mask], logits)
    return {"dose": float(outside.double().mean()), "tv_after": float(tv.double().mean())}


@contextlib.contextmanager
def old_sampling(engine: object) -> Iterator[None]:
    """The engine's token sampling as before the speed-ups (the same code: the decode is unchanged)."""
    yield


# the diagnostics whose computation changed (exact TV/KL from log-probs, entropy from the stored log-softmax):
# equal between the paths up to float rounding; everything else must be bit-identical
REORGANISED = {"tv_exact_start", "kl_exact_start", "tv_exact", "kl_exact", "tv_after", "entropy"}
PHASES = ("collect", "prepare", "update", "after")


def whole_step(
    trainer: SequenceTrainer, old: bool
) -> tuple[dict[str, float], dict[str, float], RolloutBatch]:
    """One whole step (collect, prepare, update, after) by one path: (seconds per phase, metrics, batch)."""
    times, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name], clock = now - clock, now

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    trainer.engine.begin_step(trainer.step)
    with old_sampling(trainer.engine) if old else contextlib.nullcontext():
        batch = trainer.collect()
    lap("collect")
    metrics = old_prepare(trainer, batch) if old else trainer.prepare(batch)
    lap("prepare")
    metrics.update(old_update(trainer, batch) if old else trainer.update(batch))
    lap("update")
    metrics.update(old_after_metrics(trainer, batch) if old else trainer.after_metrics(batch))
    lap("after")
    times["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    trainer.step += 1
    metrics["reward"] = float(batch.rewards.double().mean())
    return times, metrics, batch


@torch.no_grad()
def full_forward_collect(trainer: SequenceTrainer) -> int:
    """The baseline decode: the whole sequence through the model at every step; returns answer tokens drawn."""
    task, cfg = trainer.task, trainer.config
    prompts = np.repeat(task.sample_prompts(trainer.rng, cfg.prompts_per_step), cfg.group_size, axis=0)
    sequence = torch.as_tensor(prompts, dtype=torch.int64, device=trainer.device)
    ended = torch.zeros(sequence.shape[0], dtype=torch.bool, device=trainer.device)
    tokens = 0
    for _ in range(task.answer_length):
        sample = trainer.sampler.sample(trainer.served(sequence)[:, -1].float())
        tokens += int((~ended).sum())
        ended |= sample.tokens == task.eos_id
        sequence = torch.cat([sequence, sample.tokens[:, None]], dim=1)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-length", type=int, default=23, help="prompt symbols; answers are max_length + 1"
    )
    parser.add_argument("--prompts", type=int, default=16, help="prompts per rollout batch")
    parser.add_argument("--group", type=int, default=16, help="samples per prompt")
    parser.add_argument("--engine", default="model-fp32")
    parser.add_argument("--variant", default="dppo_binary_tv")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--dose-every",
        type=int,
        default=1,
        help="also report the new path's step with the after-step forward on 1 step in this many",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--stability",
        action="store_true",
        help="the stability preset's setting (--engine applies; cached warm start)",
    )
    parser.add_argument(
        "--cache-dir", default="", help="warm-start cache with --stability ('' = the default)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        if args.stability:
            settings = {**STABILITY_SETTINGS, "engine": args.engine, "variant": args.variant}
            config = SequenceConfig(**settings, threads=args.threads, cache_dir=args.cache_dir)
        else:
            config = SequenceConfig(
                task="reverse",
                max_length=args.max_length,
                prompts_per_step=args.prompts,
                group_size=args.group,
                engine=args.engine,
                variant=args.variant,
                warm_start_steps=100,
                threads=args.threads,
                cache_dir=cache,
            )
        trainer = SequenceTrainer(config)
    trainer.served.load_state_dict(trainer.policy.state_dict())
    baseline, cached = [], []
    phases: dict[bool, dict[str, list[float]]] = {
        old: {p: [] for p in (*PHASES, "faults")} for old in (True, False)
    }
    worst, worst_name, identical, worst_weight, worst_other = 0.0, "", True, 0.0, 0.0
    for round_ in range(args.rounds):
        trainer.sampler.begin_step(round_)
        start = time.perf_counter()
        tokens = full_forward_collect(trainer)
        baseline.append(tokens / (time.perf_counter() - start))
        trainer.sampler.begin_step(round_)
        start = time.perf_counter()
        batch = trainer.collect()
        cached.append(batch.num_tokens / (time.perf_counter() - start))
        # the whole step by both paths from the same weights, optimiser, generators and engine step
        state = copy.deepcopy(
            (trainer.policy.state_dict(), trainer.optimizer.state_dict(), trainer.rng.bit_generator.state)
        )
        stale, step = copy.deepcopy(trainer.stale), trainer.step
        results = {}
        for old in (round_ % 2 == 0, round_ % 2 == 1):  # alternate which path goes first
            trainer.policy.load_state_dict(state[0])
            trainer.optimizer.load_state_dict(copy.deepcopy(state[1]))
            trainer.rng.bit_generator.state = copy.deepcopy(state[2])
            trainer.stale, trainer.step = copy.deepcopy(stale), step
            times, metrics, batch = whole_step(trainer, old)
            weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
            results[old] = (metrics, weights, batch.tokens.clone())
            for name, seconds in times.items():
                phases[old][name].append(seconds)
        (m_old, w_old, t_old), (m_new, w_new, t_new) = results[True], results[False]
        identical &= torch.equal(t_old, t_new) and m_old["reward"] == m_new["reward"]
        for k in w_old:
            gap = (w_old[k] - w_new[k]).abs().max() / w_old[k].abs().max().clamp(min=1e-30)
            worst_weight = max(worst_weight, float(gap))
        for name, value in m_old.items():
            other = m_new[name]
            if name not in REORGANISED and not (value == other or (math.isnan(value) and math.isnan(other))):
                worst_other = max(worst_other, abs(value - other) / max(abs(value), 1e-12))
            if name in REORGANISED and math.isfinite(value) and math.isfinite(other):
                relative = abs(value - other) / max(abs(value), 1e-12)
                if relative > worst:
                    worst, worst_name = relative, name
    base, kv = statistics.median(baseline), statistics.median(cached)
    med = {old: {p: statistics.median(v) for p, v in phases[old].items()} for old in (True, False)}
    print(
        f"{config.task}, {trainer.task.answer_length}-token answers, V={config.vocab_size}, "
        f"params={trainer.policy.num_parameters():,}, batch={config.prompts_per_step}x{config.group_size}, "
        f"engine={args.engine}, "
        f"threads={torch.get_num_threads()}, medians of {args.rounds} interleaved rounds"
    )
    print(f"sampling, full-forward decode (baseline): {base:10,.0f} answer tokens/s")
    print(
        f"sampling, KV-cache decode:                {kv:10,.0f} answer tokens/s   ({kv / base:.1f}x the baseline)"
    )
    train_new = med[False]["prepare"] + med[False]["update"]
    train_old = med[True]["prepare"] + med[True]["update"]
    print(
        f"training (π_old + {config.num_minibatches} mini-batches):   "
        f"{batch.num_tokens * config.epochs / train_new:10,.0f} answer tokens/s"
    )
    print(
        f"training step, old path: {train_old * 1e3:8.1f} ms   new path: {train_new * 1e3:8.1f} ms   "
        f"({train_old / train_new:.2f}x); largest relative difference of the step's metrics {worst:.1e} ({worst_name})"
    )

    def line(label: str, m: dict[str, float], after_share: float) -> float:
        total = m["collect"] + m["prepare"] + m["update"] + m["after"] * after_share
        parts = ", ".join(f"{p} {m[p] * 1e3:.1f}" for p in PHASES)
        print(f"whole step, {label}: {total * 1e3:8.1f} ms  ({parts} ms)", end="")
        return total

    old_total = line("old path              ", med[True], 1.0)
    print(f"   {med[True]['faults']:,.0f} minor page faults")
    for every in sorted({1, args.dose_every}):
        new_total = line(f"new path, dose_every={every:<2d}", med[False], 1.0 / every)
        print(
            f"   {old_total / new_total:.2f}x the old path"
            + (
                f", {med[False]['faults']:,.0f} minor page faults"
                if every == 1
                else " (after on 1 step in N)"
            )
        )
    print(
        f"sampled tokens and rewards {'bit-identical' if identical else 'DIFFERENT'} between the paths; largest "
        f"relative difference of the weights after the step {worst_weight:.1e}, of the other metrics "
        f"{worst_other:.1e} (the old path's head on every position runs its GEMMs at other shapes)"
    )


if __name__ == "__main__":
    main()
