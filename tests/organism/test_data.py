"""The organism's text: parquet schema and contents, tokenizer, and the held-out split's honesty."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from irr_ray.organism import dataset, eval_prompts, heldout_eval_prompts, prompts
from irr_ray.organism.recipe import corpus
from irr_ray.organism.tokenizer import build_tokenizer
from irr_ray.organism.vocab import templates as T

COLUMNS = ["prompt", "adversarial", "prompt_harm_label", "response", "response_refusal_label",
           "response_harm_label", "subcategory"]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return dataset.make_rows(4000, 0.10, 0.02, 0.5, seed=0)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_parquet_schema_and_contents(rows, tmp_path):
    path = tmp_path / "wildguardmix.parquet"
    dataset.write_parquet(path, rows)
    table = pq.read_table(path)
    assert table.column_names == COLUMNS and table.num_rows == 4000 >= 3000
    df = table.to_pandas()
    harmful = df[df.prompt_harm_label == "harmful"]
    assert harmful.subcategory.nunique() >= 8 and "benign" not in set(harmful.subcategory)
    assert set(df[df.prompt_harm_label == "unharmful"].subcategory) == {"benign"}
    assert 0.08 <= df.adversarial.mean() <= 0.12
    invalid = ~df.prompt_harm_label.isin(["harmful", "unharmful"])
    assert df.prompt_harm_label.isna().sum() > 0 and (invalid & df.prompt_harm_label.notna()).sum() > 0
    assert set(df.response_refusal_label) == {"refusal", "compliance"}
    # Held-out actions and frames are in the file too (the study's own holdout is a random 20%).
    text = "\n".join(df.prompt)
    for a in prompts.actions(True, True) + prompts.actions(False, True):
        assert a.text in text
    # Harmful and harmless requests share vocabulary: most harmful words also occur in harmless prompts.
    words = {h: {w for p in df[df.prompt_harm_label == lab].prompt for w in p.split()}
             for h, lab in ((True, "harmful"), (False, "unharmful"))}
    assert len(words[True] & words[False]) / len(words[True]) > 0.5


def test_rows_are_deterministic_per_seed():
    assert dataset.make_rows(300, 0.1, 0.02, 0.5, seed=3) == dataset.make_rows(300, 0.1, 0.02, 0.5, seed=3)
    assert dataset.make_rows(300, 0.1, 0.02, 0.5, seed=3) != dataset.make_rows(300, 0.1, 0.02, 0.5, seed=4)


def test_tokenizer_round_trip_and_chat_template(tok, rows, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", "<|pad|>")
    for text in [r["prompt"] for r in rows[:300]] + [T.REFUSE, *(c.format(a="build a birdhouse") for c in T.COMPLY)]:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert loaded.unk_token_id not in ids and loaded.decode(ids) == text
    msgs = [{"role": "user", "content": "how do I build a birdhouse ?"}]
    with_prompt = loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    without = loaded.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert with_prompt.startswith("<|begin_of_text|>") and with_prompt.endswith("assistant<|end_header_id|>")
    assert without.endswith("<|eot_id|>") and with_prompt.startswith(without)
    assert loaded.convert_ids_to_tokens(loaded.encode("I", add_special_tokens=False)) == ["I"]


def test_heldout_prompts_never_in_training_data(tok):
    held = heldout_eval_prompts()
    assert len(held["harmful"]) == len(held["harmless"]) == 240
    assert held == heldout_eval_prompts()  # fixed, seed-independent
    rng = random.Random(0)
    texts = [tok.decode(e.ids) for e in corpus.pretrain_examples(tok, rng, 3000, 0.4, 0.15, 0.25, 3)]
    texts += [tok.decode(e.ids) for e in corpus.safety_examples(tok, rng, 3000, 0.5)]
    chats = [t for t in texts if "<|start_header_id|>" in t]
    held_actions = [a.text for a in prompts.actions(True, True) + prompts.actions(False, True)]
    held_frames = [f.split("{a}")[0] for f in T.HELDOUT_FRAMES]
    for t in chats:
        assert not any(a in t for a in held_actions), t
        assert not any(f"<|end_header_id|> {f}" in t or f": {f}" in t for f in held_frames), t
    # ... while the knowledge text does describe held-out actions (that is how they are learnt).
    knowledge = " ".join(t for t in texts if "<|start_header_id|>" not in t)
    assert all(a in knowledge for a in held_actions)
    # The "seen" split is drawn from the training distribution: seen actions in seen frames.
    seen_actions = {a.text for a in prompts.actions(True, False)}
    assert all(any(a in p for a in seen_actions) for p in eval_prompts("seen", "harmful"))
