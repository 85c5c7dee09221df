"""The local GPT-2: a complete HF directory, GPT-2 layout, cached build; raw-text encoding."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from irr_ray.models.families import get_layout
from irr_ray.sentiment.model import build_local_model, build_tokenizer, encode_texts, lm_labels
from irr_ray.sentiment.train import text_set


def test_source_model_is_a_gpt2_directory(sentiment_source):
    study, paths, source = sentiment_source
    model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(source)
    assert model.config.model_type == "gpt2"
    assert get_layout(model).num_layers == study.model.n_layer
    assert model.config.n_embd == study.model.n_embd
    text = "the plot was not dull , just brilliant ."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.unk_token_id not in tok(text)["input_ids"]
    info = json.loads((paths.model / "build.json").read_text())
    assert info["epoch_lm_loss"][-1] < info["epoch_lm_loss"][0]


def test_build_is_cached(sentiment_source):
    study, paths, _ = sentiment_source
    stamp = (paths.model / "model.safetensors").stat().st_mtime_ns
    again = build_local_model(study.model, paths.data, paths.model)  # same key: returns at once
    assert again["key"] == json.loads((paths.model / "build.json").read_text())["key"]
    assert (paths.model / "model.safetensors").stat().st_mtime_ns == stamp


def test_encoding_is_right_padded_raw_text():
    tok = build_tokenizer(["a b c", "b c d e"])
    tok.padding_side = "left"  # encode_texts must fix it: GPT-2 positions start at the first token
    enc = encode_texts(tok, ["a b", "b c d e"], max_length=3)
    assert enc["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert enc["input_ids"][0, :2].tolist() == tok.convert_tokens_to_ids(["a", "b"])
    assert lm_labels(enc["input_ids"], enc["attention_mask"])[0, 2] == -100


def test_text_set_feeds_the_shared_trainer_left_padded_with_positions():
    """Reviews become a PromptSet (irr_ray.train) with the first tokens kept and real positions."""
    import pandas as pd

    tok = build_tokenizer(["a b c d e"])
    s = text_set(pd.DataFrame({"text": ["a b c d e", "c"], "label": [1, 0]}), tok, max_length=3)
    assert s.ids[0].tolist() == tok.convert_tokens_to_ids(["a", "b", "c"])  # head of a long review
    batch = s.collate([0, 1])
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch.labels.tolist() == [1, 0]
    assert torch.equal(batch.lm_labels[1, :2], torch.tensor([-100, -100]))
