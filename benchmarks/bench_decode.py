"""Answer tokens/s of KV-cache decoding (fp32, bf16, fp16) against the full-forward decode loop.

Baseline (a): the sequence trainer's decode loop, ``model(sequence)[:, -1]`` on the growing sequence (one full
forward of ``DecoderTransformer`` per answer token). (b) ``KVCacheDecoder`` in fp32; (c) in bf16 and fp16
(``matmul="auto"``; fp16 also with ``matmul="native"``, torch's own CPU fp16 GEMM); each is one prefill and
one step per answer token but the last. Every arm draws its tokens the same way (inverse-CDF draw from the
softmax, seeded generator), so the timings include sampling; its cost alone is printed too. Default size:
B = 256 prompts × 24-token answers, prompt lengths 16, 21 and 26, V = 2,000, d_model 128, 2 layers, 4 heads,
d_ff 512, random weights, 1 torch thread. Interleaved rounds (one of each arm per round), medians after a
warm-up round. Also printed: the cost of one ``load_weights`` (a weight sync). Goal: (b) ≥ 5× (a).

Run: ``.venv/bin/python benchmarks/bench_decode.py [--batch 256] [--answer 24] [--prompt-lengths 16 21 26]
[--rounds 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from trustregion_lab.policies import DecoderTransformer, TransformerConfig
from trustregion_lab.policies.decoding import KVCacheDecoder, decode_answers


def sampler(seed: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Inverse-CDF draw from softmax(logits) [B, V] with a seeded generator (u ~ U[0, 1) per row)."""
    generator = torch.Generator().manual_seed(seed)

    def choose(logits: torch.Tensor, t: int) -> torch.Tensor:
        cdf = torch.cumsum(torch.softmax(logits, -1), -1)
        u = torch.rand(logits.shape[0], 1, generator=generator) * cdf[:, -1:]
        return torch.searchsorted(cdf, u)[:, 0].clamp_max(logits.shape[-1] - 1)

    return choose


@torch.no_grad()
def full_forward_decode(model: DecoderTransformer, prompts: torch.Tensor, answer: int) -> torch.Tensor:
    choose = sampler(0)
    sequence = prompts
    for t in range(answer):
        logits = model(sequence)[:, -1].float()
        sequence = torch.cat([sequence, choose(logits, t)[:, None]], dim=1)
    return sequence[:, prompts.shape[1] :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--answer", type=int, default=24)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[16, 21, 26])
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = TransformerConfig(
        vocab_size=args.vocab, max_seq_len=max(args.prompt_lengths) + args.answer, d_model=128, n_layers=2
    )
    torch.manual_seed(0)
    model = DecoderTransformer(config)
    decoders = {
        "fp32 KV cache": KVCacheDecoder(model, "fp32"),
        "bf16 KV cache": KVCacheDecoder(model, "bf16"),
        "fp16 KV cache": KVCacheDecoder(model, "fp16"),
        "fp16 KV cache, native fp16 GEMM": KVCacheDecoder(model, "fp16", matmul="native"),
    }
    baseline_name = "full forward (baseline)"
    print(
        f"decode speed: B = {args.batch}, answers of {args.answer} tokens, V = {args.vocab:,}, d_model 128, "
        f"2 layers, 4 heads, d_ff 512, {torch.get_num_threads()} torch thread(s), medians of {args.rounds} "
        "interleaved rounds; answer tokens/s (ratio to the baseline)"
    )
    for prompt_length in args.prompt_lengths:
        prompts = torch.randint(
            0, args.vocab, (args.batch, prompt_length), generator=torch.Generator().manual_seed(1)
        )
        runs: dict[str, Callable[[], object]] = {
            baseline_name: lambda prompts=prompts: full_forward_decode(model, prompts, args.answer)
        }
        for name, decoder in decoders.items():
            runs[name] = lambda decoder=decoder, prompts=prompts: decode_answers(
                decoder, prompts, args.answer, sampler(0)
            )
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_index in range(args.rounds + 1):  # round 0 is the warm-up
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                if round_index > 0:
                    times[name].append(time.perf_counter() - start)
        tokens = args.batch * args.answer
        base = statistics.median(times[baseline_name])
        print(f"\nprompt length {prompt_length}:")
        for name, values in times.items():
            median = statistics.median(values)
            rate = tokens / median
            print(f"  {name:34s} {median * 1e3:9.1f} ms  {rate:10,.0f} tok/s  ({base / median:5.1f}×)")
    logits = torch.randn(args.batch, args.vocab)
    choose = sampler(0)
    start = time.perf_counter()
    for t in range(args.answer):
        choose(logits, t)
    sampling = time.perf_counter() - start
    print(f"\nsampling alone ({args.answer} draws of [{args.batch}, {args.vocab}]): {sampling * 1e3:.1f} ms")
    sync = decoders["bf16 KV cache"]
    start = time.perf_counter()
    for _ in range(10):
        sync.load_weights(model)
    per_sync = (time.perf_counter() - start) / 10
    print(f"load_weights (bf16, {model.num_parameters():,} parameters): {per_sync * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
