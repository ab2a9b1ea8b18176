"""The tokenizer: byte-level BPE trained on the train split, saved as a Hugging Face fast tokenizer.

Training is deterministic for a corpus and a seed: the sample of records it sees is drawn
with ``random.Random(seed)`` from the records in record-id order, and the BPE trainer
itself is deterministic for a fixed input sequence. Digits are always single tokens. A
post-processor puts ``<|bos|>`` in
front of every encoded text, so a prompt tokenized at evaluation time starts like the
records did in training. The saved directory loads with
``AutoTokenizer.from_pretrained(dir)`` without network access; its hash (sha256 of
its canonical JSON) goes into every checkpoint manifest, so a resume with a different
tokenizer is refused. The saved tokenizer carries the serving chat template
(``serving.engine.chat_template``): vLLM reads it from the model directory, and the
embedded engine renders the same one, so chat prompts are alike on both engines.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from serving.engine.chat_template import CHAT_TEMPLATE

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]


def train_tokenizer(
    texts: list[str], vocab_size: int, seed: int, sample: int
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on up to ``sample`` of ``texts`` (record-id ordered)."""
    chosen = texts if len(texts) <= sample else random.Random(seed).sample(texts, sample)
    tok = Tokenizer(models.BPE())
    # Digits are split one by one before byte-level BPE (as Llama's tokenizer does): with
    # merged digit runs, "41" and "42" are unrelated symbols and counting or comparing
    # numbers has to be memorised number by number instead of learned digit by digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(chosen, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def encode_records(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """``<|bos|> text <|eos|>`` token ids per record."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer.backend_tokenizer.encode_batch(texts)
    return [e.ids + [eos] for e in encoded]


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    """Save with a chat template (a tokenizer saved before templates shipped gets ours)."""
    tokenizer.chat_template = tokenizer.chat_template or CHAT_TEMPLATE
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)


def tokenizer_hash(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the canonical serialisation (the same before saving and after loading)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()
