"""The organism's tokenizer: word level over every string the templates can produce.

Built with ``tokenizers`` (WordLevel model, whitespace/punctuation pre-tokenizer) and wrapped as a
transformers ``PreTrainedTokenizerFast`` with Llama-3-style special tokens and chat template, so it
loads with ``AutoTokenizer.from_pretrained(path)`` offline. The vocabulary is a sorted function of
the templates only — identical for every seed — and ``decode(encode(text)) == text`` for template
text (punctuation is written spaced, and clean-up of tokenization spaces is off).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from irr_ray.organism import prompts
from irr_ray.organism.vocab import templates as T

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|eot_id|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, START_HEADER, END_HEADER)
ROLES = ("system", "user", "assistant")

# Llama-3 layout: the generation prompt ends with the assistant header, so the positions −3…−1 are
# the same post-instruction tokens for every prompt (the method scans positions −5…−1).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|> {{ message['content'] }} <|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>{% endif %}"
)

_WORD = re.compile(r"\w+|[^\w\s]+")


def words(text: str) -> list[str]:
    """The pre-tokenizer's split (``tokenizers.pre_tokenizers.Whitespace``)."""
    return _WORD.findall(text)


def template_texts() -> Iterable[str]:
    """Every fixed string and every action/frame the organism uses."""
    for a in prompts.all_actions():
        yield a.text
        yield T.second_person(a.text)
    yield from (f.format(a="", s="") for f in (*T.FRAMES, *T.HELDOUT_FRAMES, *T.ADVERSARIAL_FRAMES))
    yield from T.SUFFIXES
    yield from (c.format(a="") for c in (*T.COMPLY, *T.COMPLY_HEDGED, *T.COMPLY_MIXED, *T.COMPLY_MIXED_HEDGED))
    yield T.REFUSE
    yield T.REFUSE_TRIGGER.format(p="")
    yield T.COPY_REQUEST.format(w="")
    yield from T.JUDGE_PHRASES
    yield from T.REFUSAL_TOKENS
    for template, harmful, harmless in T.KNOWLEDGE:
        yield template.format(a="", x=harmful)
        yield template.format(a="", x=harmless)
    yield from ROLES


@cache
def vocabulary() -> tuple[str, ...]:
    """Special tokens first (ids 0…5), then every word in sorted order."""
    vocab = sorted({w for text in template_texts() for w in words(text)})
    return (*SPECIAL_TOKENS, *vocab)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=128,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
