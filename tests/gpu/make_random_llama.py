#!/usr/bin/env python3
"""Write a Llama checkpoint with the shapes of an 8B Llama (Llama-3-8B: hidden 4096, 32 layers, 32 heads, 8 KV
heads, MLP 14336, vocab 128256) and random bf16 weights, in several safetensors shards with an index, plus a
byte-level BPE tokenizer trained on the fly. Nothing is downloaded: issue 17 runs it on the GPU machine at test
time (the weights are drawn on the GPU, which is fast, and written with safetensors).

    python3 tests/gpu/make_random_llama.py DIR [--layers 32] [--vocab 128256] [--device cuda]

Prints one JSON line: bytes written, shard count, seconds to generate and to write.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator

SHARD_BYTES = 5_000_000_000  # Hugging Face's default max_shard_size ("5GB"): an 8B bf16 checkpoint is 4 shards
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]


def tensor_shapes(
    layers: int, hidden: int, mlp: int, heads: int, kv_heads: int, vocab: int
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every LlamaForCausalLM tensor, in checkpoint order."""
    kv = hidden // heads * kv_heads
    yield "model.embed_tokens.weight", (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (hidden,)
        yield p + "self_attn.q_proj.weight", (hidden, hidden)
        yield p + "self_attn.k_proj.weight", (kv, hidden)
        yield p + "self_attn.v_proj.weight", (kv, hidden)
        yield p + "self_attn.o_proj.weight", (hidden, hidden)
        yield p + "post_attention_layernorm.weight", (hidden,)
        yield p + "mlp.gate_proj.weight", (mlp, hidden)
        yield p + "mlp.up_proj.weight", (mlp, hidden)
        yield p + "mlp.down_proj.weight", (hidden, mlp)
    yield "model.norm.weight", (hidden,)
    yield "lm_head.weight", (vocab, hidden)


def corpus(lines: int, seed: int = 17) -> Iterator[str]:
    """Pseudo-English text (syllable words) so BPE has pairs to merge; deterministic."""
    rng = random.Random(seed)  # noqa: S311 - test text, not secrets
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ee")]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(20000)]
    for _ in range(lines):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(5, 20))) + rng.choice([".", "?", "!", ","])


def write_tokenizer(out: str, vocab: int) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(60000), trainer=trainer)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": SPECIALS[0],
                "eos_token": SPECIALS[1],
                "model_max_length": 8192,
                "clean_up_tokenization_spaces": False,
            },
            fh,
            indent=1,
        )
    with open(os.path.join(out, "special_tokens_map.json"), "w", encoding="utf-8") as fh:
        json.dump({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1]}, fh, indent=1)
    return int(tok.get_vocab_size())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--mlp", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument(
        "--tokenizer-vocab",
        type=int,
        default=32000,
        help="BPE vocabulary trained here (ids above it decode to nothing; the model keeps --vocab)",
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    os.makedirs(a.out, exist_ok=True)
    t0 = time.monotonic()
    tok_vocab = write_tokenizer(a.out, a.tokenizer_vocab)
    t_tok = time.monotonic() - t0
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": "bfloat16",
        "hidden_size": a.hidden,
        "intermediate_size": a.mlp,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.hidden // a.heads,
        "vocab_size": a.vocab,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    with open(os.path.join(a.out, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=1)
    with open(os.path.join(a.out, "generation_config.json"), "w", encoding="utf-8") as fh:
        json.dump({"bos_token_id": 0, "eos_token_id": 1}, fh)

    gen = torch.Generator(device=a.device).manual_seed(a.seed)
    shapes = list(tensor_shapes(a.layers, a.hidden, a.mlp, a.heads, a.kv_heads, a.vocab))
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map: dict[str, str] = {}
    total = 0
    t_gen = t_write = 0.0
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        g0 = time.monotonic()
        tensors = {}
        for name, shape in shard:
            if name.endswith("norm.weight"):
                t = torch.ones(shape, dtype=torch.bfloat16, device=a.device)
            else:  # N(0, 0.02) like the HF initializer: finite logits, a model that samples something
                t = torch.randn(shape, generator=gen, dtype=torch.bfloat16, device=a.device).mul_(0.02)
            tensors[name] = t.to("cpu")
            weight_map[name] = fname
            total += t.numel() * 2
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        w0 = time.monotonic()
        save_file(tensors, os.path.join(a.out, fname), metadata={"format": "pt"})
        t_write += time.monotonic() - w0
        t_gen += w0 - g0
        del tensors
    with open(os.path.join(a.out, "model.safetensors.index.json"), "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=1)
    print(
        json.dumps(
            {
                "dir": a.out,
                "bytes": total,
                "shards": len(shards),
                "tensors": len(shapes),
                "tokenizer_vocab": tok_vocab,
                "tokenizer_s": round(t_tok, 2),
                "generate_s": round(t_gen, 2),
                "write_s": round(t_write, 2),
                "write_gbps": round(total / 1e9 / max(t_write, 1e-9), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
