"""Build a tiny random-weight Llama that real vLLM (CPU backend) serves: run with the vLLM venv's Python.

hidden 256, 4 heads (head_dim 64: the CPU attention kernel refuses 16), 2 KV heads, 2 layers, intermediate 512,
vocab 512 with a byte-level BPE tokenizer trained here on a few lines of text. Nothing comes from a model hub.
Usage: python tiny_llama.py OUT_DIR
"""

from __future__ import annotations

import sys


def main(out: str) -> int:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = [
        "Hello world, the quick brown fox jumps over the lazy dog.",
        "vLLM serves tokens on NUMA nodes.",
        "One two three four five six seven eight nine ten.",
    ] * 50
    tok.train_from_iterator(text, trainer)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}  # token names, not secrets
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    fast.save_pretrained(out)
    cfg = LlamaConfig(
        vocab_size=fast.vocab_size if fast.vocab_size >= 512 else 512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
