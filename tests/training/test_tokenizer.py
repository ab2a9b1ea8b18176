"""Contract: the tokenizer is deterministic for a corpus and seed and loads offline with bos/eos/pad;
it is saved with the serving chat template, which renders chat as the embedded engine does
(with BOS first, as vLLM tokenizes a rendered chat without adding special tokens)."""

from __future__ import annotations

from transformers import AutoTokenizer

from ingestion.sample import generate_records
from serving.engine.chat_template import CHAT_TEMPLATE, render_chat
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


def test_saved_tokenizer_ships_the_chat_template_both_engines_render(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = [r["text"] for r in generate_records(300, seed=2)]
    save_tokenizer(train_tokenizer(texts, vocab_size=300, seed=1, sample=300), tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    chats = [
        [("user", "Q: what comes after 41? A:")],
        [("system", "answer briefly"), ("user", "hello")],
    ]
    for chat in chats:
        messages = [{"role": r, "content": c} for r, c in chat]
        # what vLLM does: render the directory's template, tokenize without special tokens
        prompt = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        vllm_ids = loaded(prompt, add_special_tokens=False)["input_ids"]
        # what the embedded engine does: render_chat, tokenize with special tokens
        engine_ids = loaded(render_chat(chat, loaded))["input_ids"]
        assert vllm_ids == engine_ids and vllm_ids[0] == loaded.bos_token_id
    # a task prompt as the only message renders exactly as the completion prompt
    assert render_chat(chats[0], loaded) == "Q: what comes after 41? A:"
    assert render_chat(chats[1], loaded) == "system: answer briefly\nuser: hello\nassistant:"
