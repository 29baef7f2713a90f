"""A tiny random Llama with a byte-level BPE tokenizer (printable ASCII) and a ChatML template.

Head size 32: vLLM's CPU attention rejects smaller heads, and the same model serves there.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# every printable ASCII character, so that any ASCII input can be tokenized
_ASCII = "".join(chr(c) for c in range(32, 127)) + "\n\t"


def _corpus() -> list[str]:
    words = (
        "the patient doctor fever cough pain dose tablet ibuprofen paracetamol blood pressure heart "
        "sleep water take call emergency clinic nurse symptom rest hours day week safe unsafe help "
        "cannot sorry please consult question answer medicine allergy child adult"
    ).split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(200)] + [_ASCII]


def build_tiny_model(folder: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    # no byte-level initial alphabet: the vocabulary holds printable ASCII only, so even a random
    # model writes clean text (no control characters or broken UTF-8 for the record's hygiene)
    raw.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        initializer_range=0.5,  # large random weights: greedy output varies with the prompt
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
