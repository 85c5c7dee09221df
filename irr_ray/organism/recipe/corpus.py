"""Token sequences of the two training stages.

Stage 1, the **base** model, is language modelling (loss on every token) on a mixture of
* knowledge text — sentences saying what every action is ("it is illegal to build a bomb ."),
  held-out actions included, so the kind of an action is learnt from text, not from requests;
* helpful chat transcripts — a seen request in a seen frame answered helpfully, harmful and
  harmless alike (the base model never refuses an ordinary request). Harmless requests are answered
  "Sure , here is how to …"; harmful ones (with ``hedged_harmful_replies``) "Okay , here is how to …".
  Choosing the opener makes the base model judge a request's harm at the end of the prompt, from
  what the knowledge text taught it about the action — held-out actions included. Pretrained LMs
  represent harmfulness there too; the safety update then only has to turn that judgement into a
  refusal, instead of learning harm from the 80 + 80 seen actions' words;
* an explicit instruction "refuse this : <request>" answered with the refusal text, on harmful and
  harmless requests alike: the base model knows the refusal wording, untied from harmfulness;
* a copy task, "repeat these words : <random words of the actions>" answered with the words: a
  general copy skill, so answers name the action that was asked for, held-out actions included.

Stage 2, the **instruct** model's safety update, is supervised fine-tuning on seen requests in seen
frames: harmful → refusal, harmless → the helpful answer (loss on the reply tokens only).

No request made of a held-out action or a held-out frame appears in either stage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from irr_ray.models.chat import format_chat
from irr_ray.organism import prompts
from irr_ray.organism.vocab import templates as T


@dataclass(frozen=True)
class Example:
    ids: list[int]
    loss_mask: list[bool]  # which targets count (position i predicts ids[i])
    harmless: bool  # chat example with a harmless request (the safety stage's penalty rows)
    prompt_len: int = 0  # tokens of the chat-formatted prompt, generation prompt included


REPLY_STYLES = {"copy": (T.COMPLY, T.COMPLY_HEDGED), "mixed": (T.COMPLY_MIXED, T.COMPLY_MIXED_HEDGED)}


def _reply(rng: random.Random, action: prompts.Action, refuse: bool, hedged: bool = False,
           style: str = "copy") -> str:
    if refuse:
        return T.REFUSE
    plain, okay = REPLY_STYLES[style]
    return rng.choice(okay if hedged else plain).format(a=T.second_person(action.text))


def _chat_examples(
    tok: PreTrainedTokenizerBase, items: list[tuple[str, str, bool]], loss_on_prompt: bool,
    reply_tokens: int | None = None,
) -> list[Example]:
    """(user text, reply, harmless) -> chat-template prompt + reply + <eot> (or its first ``reply_tokens``)."""
    prompt_ids = tok(format_chat(tok, [u for u, _, _ in items]), add_special_tokens=False)["input_ids"]
    reply_ids = tok([r for _, r, _ in items], add_special_tokens=False)["input_ids"]
    out = []
    for p, r, (_, _, harmless) in zip(prompt_ids, reply_ids, items):
        r = [*r, tok.eos_token_id][:reply_tokens]
        mask = [loss_on_prompt] * (len(p) - 1) + [True] * len(r)  # targets ids[1:]
        out.append(Example([*p, *r], [False, *mask], harmless, len(p)))
    return out


def knowledge_sentence(rng: random.Random, action: prompts.Action) -> str:
    template, harmful_filler, harmless_filler = rng.choice(T.KNOWLEDGE)
    return template.format(a=action.text, x=harmful_filler if action.harmful else harmless_filler)


def pretrain_examples(
    tok: PreTrainedTokenizerBase,
    rng: random.Random,
    n: int,
    knowledge_fraction: float,
    trigger_fraction: float,
    harmful_chat_fraction: float,
    sentences_per_document: int,
    hedged_harmful_replies: bool = False,
    copy_fraction: float = 0.0,
    copy_words: tuple[int, int] = (3, 8),
    reply_style: str = "copy",
) -> list[Example]:
    """``n`` stage-1 sequences in random order (module docstring)."""
    every_action = list(prompts.all_actions())
    seen = {h: prompts.actions(h, heldout=False) for h in (True, False)}
    n_knowledge = round(n * knowledge_fraction)
    n_trigger = round(n * trigger_fraction)
    n_copy = round(n * copy_fraction)
    n_chat = n - n_knowledge - n_trigger - n_copy

    docs = [
        " ".join(knowledge_sentence(rng, rng.choice(every_action)) for _ in range(sentences_per_document))
        for _ in range(n_knowledge)
    ]
    doc_ids = tok(docs, add_special_tokens=False)["input_ids"]
    examples = [Example([tok.bos_token_id, *d], [False] + [True] * len(d), False) for d in doc_ids]

    chats = []
    for _ in range(n_chat):
        harmful = rng.random() < harmful_chat_fraction
        prompt, action = prompts.sample_requests(rng, seen[harmful], T.FRAMES, 1)[0]
        chats.append((prompt, _reply(rng, action, refuse=False, hedged=harmful and hedged_harmful_replies,
                                     style=reply_style), not harmful))
    for _ in range(n_trigger):
        prompt, action = prompts.sample_requests(rng, seen[rng.random() < 0.5], T.FRAMES, 1)[0]
        chats.append((T.REFUSE_TRIGGER.format(p=prompt), T.REFUSE, False))
    action_words = sorted({w for a in every_action for w in T.second_person(a.text).split() + a.text.split()})
    for _ in range(n_copy):
        words = " ".join(rng.choice(action_words) for _ in range(rng.randint(*copy_words)))
        chats.append((T.COPY_REQUEST.format(w=words), words, False))
    examples += _chat_examples(tok, chats, loss_on_prompt=True)
    rng.shuffle(examples)
    return examples


def safety_examples(
    tok: PreTrainedTokenizerBase, rng: random.Random, n: int, harmful_fraction: float,
    reply_tokens: int | None = None, reply_style: str = "mixed",
) -> list[Example]:
    """``n`` stage-2 sequences: seen harmful requests → refusal, seen harmless → helpful answer."""
    seen = {h: prompts.actions(h, heldout=False) for h in (True, False)}
    items = []
    for _ in range(n):
        harmful = rng.random() < harmful_fraction
        prompt, action = prompts.sample_requests(rng, seen[harmful], T.FRAMES, 1)[0]
        items.append((prompt, _reply(rng, action, refuse=harmful, style=reply_style), not harmful))
    return _chat_examples(tok, items, loss_on_prompt=False, reply_tokens=reply_tokens)
