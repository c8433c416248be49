"""TRL end to end: GRPOTrainer trains a tiny randomly initialised causal LM for a few steps on the CPU, the
README's export recipe writes the per-token tables, and the report runs on them.

Skipped when trl is not installed (the project's own environment does not carry it; a separate environment with
``pip install -c constraints.txt torch==2.13.0 -e . trl`` does). Nothing is downloaded: the model is built from a
config and the tokenizer in code. Without vLLM the rollout comes from a ``rollout_func`` that samples with
transformers' ``generate`` and returns the sampled tokens' log-probs, which TRL passes on as
``sampling_per_token_logps`` (μ); ``num_iterations=2`` makes TRL compute ``old_per_token_logps`` (π_old).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

trl = pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Regex, Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from trustregion_lab.report import from_trl, run_report, write_token_table  # noqa: E402

SEED = int(np.random.SeedSequence().entropy % 2**31)


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate("abcdefgh ")}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.mark.slow
def test_grpo_trainer_export_and_report(tmp_path, monkeypatch):
    print("seed", SEED)
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.manual_seed(SEED)
    tokenizer = _tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(config)

    def reward(completions, **kwargs):
        return [float(c.count("a")) - 0.1 * len(c) for c in completions]

    sampled: list[np.ndarray] = []

    def rollout(prompts, trainer):  # the engine: transformers' generate, one completion per prompt entry
        prompt_ids, completion_ids, logprobs = [], [], []
        for prompt in prompts:
            ids = tokenizer(prompt)["input_ids"]
            batch = torch.tensor([ids])
            with torch.no_grad():
                gen = trainer.model.generate(
                    batch,
                    attention_mask=torch.ones_like(batch),
                    do_sample=True,
                    max_new_tokens=6,
                    output_scores=True,
                    return_dict_in_generate=True,
                    pad_token_id=0,
                    top_k=0,
                    top_p=1.0,
                    temperature=1.0,
                )
            new = gen.sequences[:, len(ids) :]
            lp = torch.stack(gen.scores, 1).log_softmax(-1).gather(-1, new[..., None])[..., 0]
            prompt_ids.append(ids)
            completion_ids.append(new[0].tolist())
            logprobs.append(lp[0].tolist())
            sampled.append(lp[0].numpy())
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}

    batches: list[dict] = []

    class ExportingGRPOTrainer(trl.GRPOTrainer):  # the README's recipe
        calls = 0

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            rank, step = self.accelerator.process_index, self.state.global_step
            frame = from_trl(out, step=step, first_sequence=(self.calls * 64 + rank) * 100_000)
            path = tmp_path / "token_tables" / f"step_{step:06d}_{rank}_{self.calls}.parquet"
            write_token_table(frame, path, source="trl")
            batches.append({k: v.clone() for k, v in out.items() if isinstance(v, torch.Tensor)})
            self.calls += 1
            return out

    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=3,
        num_iterations=2,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        learning_rate=1e-2,
        seed=SEED,
    )
    data = Dataset.from_dict({"prompt": ["ab", "cd", "ef", "gh"] * 4})
    trainer = ExportingGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        rollout_func=rollout,
    )
    trainer.train()
    assert torch.__version__.startswith("2.13.0")  # installing trl kept the pinned torch
    assert batches and all("sampling_per_token_logps" in b and "old_per_token_logps" in b for b in batches)

    # every exported table holds exactly the completion tokens TRL trained on, with μ and π_old from the batch
    files = sorted((tmp_path / "token_tables").glob("*.parquet"))
    assert len(files) == len(batches)
    tokens = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    mask = np.concatenate([b["completion_mask"].numpy().astype(bool).ravel() for b in batches])
    assert len(tokens) == int(mask.sum())
    mu = np.concatenate([b["sampling_per_token_logps"].double().numpy().ravel() for b in batches])[mask]
    old = np.concatenate([b["old_per_token_logps"].double().numpy().ravel() for b in batches])[mask]
    np.testing.assert_array_equal(tokens["rollout_logprob"].to_numpy(), mu)
    np.testing.assert_array_equal(tokens["logprob"].to_numpy(), old)
    assert "is_weight" not in tokens  # TRL computes importance_sampling_ratio only with vLLM

    out = tmp_path / "report"
    run_report(tmp_path / "token_tables", out=out, progress=False)
    by_step = pd.read_csv(out / "by_step.csv")
    rows = by_step[by_step["metric"] == "mismatch_logprob_abs"].set_index("step")["value"]
    want = tokens.assign(d=(tokens["logprob"] - tokens["rollout_logprob"]).abs()).groupby("step")["d"].mean()
    np.testing.assert_allclose(rows.sort_index().to_numpy(), want.sort_index().to_numpy(), rtol=1e-9)
    assert set(by_step["source_metric"].dropna()) >= {"sampling/sampling_logp_difference/mean"}
    card = (out / "report.md").read_text()
    assert "before this step's updates" in card and "sequence-level IS cap of 3" in card
    assert os.path.exists(out / "summary.csv")
    print("mean |log π_old − log μ|:", float(want.mean()))
