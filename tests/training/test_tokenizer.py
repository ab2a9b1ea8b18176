"""Contract: the tokenizer is deterministic for a corpus and seed and loads offline with bos/eos/pad."""

from __future__ import annotations

from transformers import AutoTokenizer

from ingestion.sample import generate_records
from training.tokenizer import encode_records, save_tokenizer, tokenizer_hash, train_tokenizer


def test_deterministic_and_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = [r["text"] for r in generate_records(800, seed=2)]
    a = train_tokenizer(texts, vocab_size=400, seed=1, sample=300)
    b = train_tokenizer(list(texts), vocab_size=400, seed=1, sample=300)
    c = train_tokenizer(texts, vocab_size=400, seed=2, sample=300)
    assert tokenizer_hash(a) == tokenizer_hash(b)
    assert tokenizer_hash(a) != tokenizer_hash(c), "the seed picks the tokenizer's sample"
    save_tokenizer(a, tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    ids = loaded(texts[0])["input_ids"]
    assert ids[0] == loaded.bos_token_id
    assert encode_records(a, [texts[0]])[0] == ids + [loaded.eos_token_id]
    assert loaded.decode(ids, skip_special_tokens=True) == texts[0]
