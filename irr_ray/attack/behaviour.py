"""Behavioural evaluation: greedy replies to held-out prompts → refused / complied / degenerate.

Used at K = 0 (the model as it is) and after every step of the attack (the K chosen directions
ablated at three sites of every layer, through the hf backend's ``intervention`` hook; on the
``vllm`` backend, the same model served as a checkpoint with the directions orthogonalised out of
its weights, :mod:`irr_ray.generation.orthogonalized`). Per class
(harmful, harmless) one evaluation gives, as one K-curve row (:class:`irr_ray.contracts.CurveRow`):

* the judged outcome of every reply (:mod:`irr_ray.core.outcomes`): refused (the judge), degenerate
  (form; an opening the unattacked reference model never uses; or NLL under the reference above
  the K=0-calibrated bound) or complied;
  refusal rates with 95% Wilson intervals (:func:`irr_ray.core.stats.wilson_interval`);
* ``p_refusal``: the mean first-token refusal probability Σ_{t∈R} softmax(z)_t at the last prompt
  position under the same ablation (the decision itself, without generation);
* ``reply_nll``: the mean of the per-reply NLLs ν (tokens 2 … n, under the reference model);
* ``kl_harmless``: mean first-token KL(unattacked ‖ ablated) on the harmless prompts.

Judge parse errors (WildGuard) count as not refused, as in the data stage, and are reported.

**Prompt reuse** (``generation.reuse_prefill``, default on; off = the separate forwards of the plain
path, ``irr-ray bench attack --stage``). The prompts are the same at every K, so:

* the first-token distribution under the ablation is the generation's own prefill logits at the
  last prompt position (the shrinking engine, :func:`irr_ray.generation.hf.generate_greedy_prefill`:
  the same forward, bit-identical), not a second forward of the prompts;
* the unattacked reference's prompt KV cache is computed once per evaluator (or taken from the K=0
  generation's prefill when the reference is the model itself), and gives at once the reference's
  first-token distribution (the opener rule; the unattacked logits for the KL when the reference is
  the model) and every later reply NLL from a forward over the reply tokens alone
  (:func:`irr_ray.generation.prefix.reply_nll_from_cache`; equal to the all-at-once forward up to
  float rounding, ≤ 1e-6 nats on the organism).

Per K this leaves one generation and one reply-only forward (the plain path: generation, a
prompt + reply forward and a prompt forward). Outcomes are identical on the organism
(``tests/attack/test_prefill_reuse.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from irr_ray.attack.config import EvalGenerationConfig
from irr_ray.attack.prompts import PromptPair
from irr_ray.core.hooks import ablate_directions, left_pad_position_ids
from irr_ray.core.outcomes import (
    COMPLIED,
    DEGENERATE,
    OUTCOME_NAMES,
    REFUSED,
    DegenerateRules,
    classify,
    form_is_degenerate,
    implausible_opening,
    nll_bound,
)
from irr_ray.core.scoring import continuation_nll
from irr_ray.core.stats import wilson_interval
from irr_ray.generation.hf import generate_greedy, generate_greedy_prefill
from irr_ray.generation.prefix import PromptKV, prefill_prompts, reply_nll_from_cache
from irr_ray.judges.base import Judge
from irr_ray.models.chat import format_chat, tokenize_chat

Intervention = Callable[[], AbstractContextManager[Any]]
N_EXAMPLES = 3  # replies per class kept for inspection (attack_log.json)


@dataclass(frozen=True)
class ClassOutcome:
    """Outcomes of one class's replies at one K."""

    n: int
    refused: int
    complied: int
    degenerate: int
    p_refusal: float
    reply_nll: float

    def share(self, count: int) -> float:
        return count / self.n if self.n else float("nan")


@dataclass(frozen=True)
class Behaviour:
    """One behavioural evaluation (a K-curve row without the direction)."""

    harmful: ClassOutcome
    harmless: ClassOutcome
    kl_harmless: float
    parse_errors: int = 0
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict, compare=False)

    @property
    def refusal_harmful(self) -> float:
        return self.harmful.share(self.harmful.refused)

    @property
    def refusal_harmless(self) -> float:
        return self.harmless.share(self.harmless.refused)

    def row(self) -> dict[str, Any]:
        """The behavioural fields of a :class:`~irr_ray.contracts.CurveRow`."""
        out: dict[str, Any] = {}
        for cls, o in (("harmful", self.harmful), ("harmless", self.harmless)):
            out[f"refusal_{cls}"] = o.share(o.refused)
            out[f"refusal_{cls}_ci"] = list(wilson_interval(o.refused, o.n))
            out[f"complied_{cls}"] = o.share(o.complied)
            out[f"degenerate_{cls}"] = o.share(o.degenerate)
            out[f"p_refusal_{cls}"] = o.p_refusal
            out[f"reply_nll_{cls}"] = o.reply_nll
        out["kl_harmless"] = self.kl_harmless
        return out

    def counts(self) -> dict[str, int]:
        return {"harmful_refused": self.harmful.refused, "harmful_n": self.harmful.n,
                "harmless_refused": self.harmless.refused, "harmless_n": self.harmless.n,
                "judge_parse_errors": self.parse_errors}


@torch.no_grad()
def last_position_logprobs(model: PreTrainedModel, batches: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """log softmax of the next-token logits at the last prompt position, [N, V] float64 on CPU."""
    out = []
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=left_pad_position_ids(b["attention_mask"]), use_cache=False,
                       logits_to_keep=1).logits[:, -1, :]
        out.append(torch.log_softmax(logits.double(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def reply_nll(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
              replies: Sequence[str], batch_size: int) -> tuple[torch.Tensor, list[list[int]]]:
    """ν per reply: mean NLL of reply tokens 2 … n given the chat prompt and the earlier reply tokens
    ([N] float64, NaN for replies of ≤ 1 token), and the replies' token ids. Left-padded batches;
    only the last ``max reply length`` positions' logits are kept."""
    device = next(model.parameters()).device
    chat = format_chat(tokenizer, prompts)
    prompt_ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(list(replies), add_special_tokens=False)["input_ids"] if replies else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.full((len(prompts),), float("nan"), dtype=torch.float64)
    for lo in range(0, len(prompts), batch_size):
        rows = range(lo, min(lo + batch_size, len(prompts)))
        r = max(len(reply_ids[i]) for i in rows)
        if r < 2:
            continue
        ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(prompt_ids[i] + reply_ids[i]) for i in rows],
                                              batch_first=True, padding_value=pad, padding_side="left")
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(prompt_ids[i]) + len(reply_ids[i]), dtype=torch.long)
                                                for i in rows], batch_first=True, padding_side="left")
        # of each row's last r − 1 tokens, keep reply tokens 2 … n (rows end with their reply)
        lengths = torch.tensor([len(reply_ids[i]) for i in rows]).unsqueeze(1)
        keep = torch.arange(1, r).unsqueeze(0) >= r - lengths + 1
        out[lo:lo + len(rows)] = continuation_nll(model, ids.to(device), mask.to(device), keep.to(device)).cpu()
    return out, [list(x) for x in reply_ids]


class BehaviourEvaluator:
    """Generate greedily for a fixed prompt pair, judge and classify the replies; one model, many
    ablations. ``reference``: the unattacked model that scores reply NLLs (the source model of a
    checkpoint; default: this model without hooks); ``bound``: its calibrated NLL bound (default:
    calibrated on this evaluator's own K=0 replies, see :mod:`irr_ray.core.outcomes`)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        judge: Judge,
        prompts: PromptPair,
        generation: EvalGenerationConfig,
        refusal_ids: Sequence[int],
        vllm: Any | None = None,
        reference: PreTrainedModel | None = None,
        bound: float | None = None,
        rules: DegenerateRules = DegenerateRules(),
    ) -> None:
        """``vllm``: the ``vllm`` generation backend, an
        :class:`~irr_ray.generation.orthogonalized.OrthogonalizedVLLM` of this model: plain and
        ``directions`` runs generate from the model with the directions orthogonalised out of its
        weights (equal to the hook ablation on a pre-norm family), served by vLLM; a run under an
        opaque ``intervention`` (another attack of the suite) generates with hf. Everything else
        (first-token refusal probability, KL, reply NLLs) runs on this hf model either way."""
        self.model = model
        self.tokenizer = tokenizer
        self.judge = judge
        self.prompts = prompts
        self.generation = generation
        self.refusal_ids = torch.as_tensor(list(refusal_ids), dtype=torch.long)
        self.vllm = vllm
        self.reference = reference if reference is not None else model
        self.bound = bound
        self.rules = rules
        device = next(model.parameters()).device
        self._all = [*prompts.harmful, *prompts.harmless]
        bs = generation.batch_size
        self._batches = [tokenize_chat(tokenizer, self._all[i:i + bs], device=device)
                         for i in range(0, len(self._all), bs)]
        self._rows = [list(range(i, min(i + bs, len(self._all)))) for i in range(0, len(self._all), bs)]
        self._unattacked: torch.Tensor | None = None
        self._openers: torch.Tensor | None = None
        self._prompt_kv: list[PromptKV] | None = None  # the reference's, per batch (reuse_prefill)
        self._kv_unavailable = False  # the reference's cache cannot be snapshot: all-at-once NLLs

    @property
    def reuse(self) -> bool:
        return bool(getattr(self.generation, "reuse_prefill", False))

    def _logprobs(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """log softmax in float64 on CPU per batch, concatenated: as :func:`last_position_logprobs`."""
        return torch.cat([torch.log_softmax(z.double(), dim=-1).cpu() for z in logits])

    def _adopt_prompt_kv(self, kv: list[PromptKV]) -> None:
        """The reference's prompt cache, and what its prefill logits give for free: the openers and
        (reference = model) the unattacked first-token distribution."""
        self._prompt_kv = kv
        logp = self._logprobs([k.last_logits for k in kv])
        if self.reference is self.model and self._unattacked is None:
            self._unattacked = logp
        if self._openers is None:
            self._openers = logp.exp().max(0).values

    def _reference_kv(self) -> list[PromptKV] | None:
        """The reference model's prompt KV per evaluation batch, prefilled once (reuse_prefill)."""
        if self._prompt_kv is None and not self._kv_unavailable:
            kv = [prefill_prompts(self.reference, b) for b in self._batches]
            if any(k is None for k in kv):
                self._kv_unavailable = True
                return None
            self._adopt_prompt_kv([k for k in kv if k is not None])
        return self._prompt_kv

    def _generate(self, prompts: Sequence[str], make: Intervention | None,
                  directions: torch.Tensor | None = None, opaque: bool = False) -> list[str]:
        if self.vllm is not None and not opaque:
            return list(self.vllm.generate(list(prompts), directions if make is not None else None))
        return generate_greedy(self.model, self.tokenizer, list(prompts),
                               max_new_tokens=self.generation.max_new_tokens,
                               batch_size=self.generation.batch_size, intervention=make,
                               engine=self.generation.engine)

    def close(self) -> None:
        """Release the vLLM engine (if any); the hf model stays usable."""
        if self.vllm is not None:
            self.vllm.close()
            self.vllm = None

    def _intervention(self, directions: torch.Tensor | None) -> Intervention | None:
        if directions is None or directions.shape[0] == 0:
            return None
        d = directions.to(next(self.model.parameters()).device)
        return lambda: ablate_directions(self.model, d)

    def _opener_prob(self) -> torch.Tensor:
        """[V] max over the evaluation prompts of the unattacked reference model's first-token probability."""
        if self._openers is None and self.reuse:
            self._reference_kv()
        if self._openers is None:
            if self.reference is self.model:
                if self._unattacked is None:
                    self._unattacked = last_position_logprobs(self.model, self._batches)
                logp = self._unattacked
            else:
                logp = last_position_logprobs(self.reference, self._batches)
            self._openers = logp.exp().max(0).values
        return self._openers

    def _first_token(self, make: Intervention | None,
                     logp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(p_refusal [N], KL(unattacked ‖ this) [N]) at the last prompt position; ``logp``: this
        run's first-token log-probabilities when the generation's prefill gave them."""
        if self._unattacked is None and make is None and logp is not None:
            self._unattacked = logp
        if self._unattacked is None and self.reuse and self.reference is self.model:
            self._reference_kv()
        if self._unattacked is None:
            self._unattacked = last_position_logprobs(self.model, self._batches)
        if make is None:
            logp = self._unattacked
        elif logp is None:
            with make():
                logp = last_position_logprobs(self.model, self._batches)
        p_refusal = logp[:, self.refusal_ids].exp().sum(-1)
        kl = (self._unattacked.exp() * (self._unattacked - logp)).sum(-1)
        return p_refusal, kl

    def outcomes(self, prompts: Sequence[str], replies: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(outcome code per reply, ν per reply, judge parse errors): judge, then the degenerate rule
        (:mod:`irr_ray.core.outcomes`). The first call calibrates the NLL bound on these replies
        (the K=0 ones) when none was given."""
        verdicts = self.judge.judge(list(prompts), list(replies))
        refused = torch.tensor([bool(v.predicted_refusal) for v in verdicts], dtype=torch.bool)
        kv = self._reference_kv() if self.reuse and list(prompts) == self._all else None
        if kv is not None:
            nll, reply_ids = self._cached_reply_nll(kv, replies)
        else:
            nll, reply_ids = reply_nll(self.reference, self.tokenizer, prompts, replies, self.generation.batch_size)
        first = torch.tensor([ids[0] if ids else -1 for ids in reply_ids], dtype=torch.long)
        form = form_is_degenerate(reply_ids, self.rules) | implausible_opening(first, self._opener_prob(), self.rules)
        if self.bound is None:
            answers = ~form & ~refused
            self.bound = nll_bound(nll[answers] if bool(answers.any()) else nll[~form], self.rules)
        return classify(refused, form, nll, self.bound), nll, sum(bool(v.judge_parse_error) for v in verdicts)

    def _cached_reply_nll(self, kv: list[PromptKV], replies: Sequence[str]) -> tuple[torch.Tensor, list[list[int]]]:
        """:func:`reply_nll` from the reference's prompt cache: the reply tokens only, per batch."""
        reply_ids = [list(x) for x in self.tokenizer(list(replies), add_special_tokens=False)["input_ids"]]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = torch.full((len(replies),), float("nan"), dtype=torch.float64)
        for rows, prompt in zip(self._rows, kv, strict=True):
            out[rows[0]:rows[-1] + 1] = reply_nll_from_cache(self.reference, prompt, [reply_ids[i] for i in rows], pad)
        return out, reply_ids

    def _generate_reusing(self, make: Intervention | None) -> tuple[list[str], torch.Tensor]:
        """Replies and first-token log-probabilities [N, V] from one generation (shrinking engine);
        an unablated run of the reference model itself also hands over its prompt KV cache."""
        donate = make is None and self.reference is self.model and self._prompt_kv is None and not self._kv_unavailable
        res = generate_greedy_prefill(self.model, self.tokenizer, self._all,
                                      max_new_tokens=self.generation.max_new_tokens,
                                      batch_size=self.generation.batch_size, intervention=make, keep_prompt_kv=donate)
        assert res.first_logits is not None
        logp = self._logprobs([res.first_logits[rows[0]:rows[-1] + 1] for rows in self._rows])
        if donate and res.prompt_kv is not None:
            kv = [k for _, k in res.prompt_kv if k is not None]
            if len(kv) == len(self._rows) and [rows for rows, _ in res.prompt_kv] == self._rows:
                self._adopt_prompt_kv(kv)
            else:  # a cache that cannot be snapshot: NLLs all at once, as without reuse
                self._kv_unavailable = True
        return res.replies, logp

    def run(self, directions: torch.Tensor | None = None, intervention: Intervention | None = None) -> Behaviour:
        """Outcomes with ``directions`` [K, D] (orthonormal rows) ablated, or under ``intervention``
        (a context-manager factory that changes the model: another attack of the suite); neither =
        the plain model. The first plain call calibrates the NLL bound when none was given."""
        if directions is not None and intervention is not None:
            raise ValueError("BehaviourEvaluator.run: pass directions or an intervention, not both")
        make = intervention if intervention is not None else self._intervention(directions)
        prompts = self._all
        opaque = intervention is not None
        first: torch.Tensor | None = None
        if self.bound is None and make is not None:
            raise RuntimeError("BehaviourEvaluator: calibrate the NLL bound at K=0 before attacking")
        if self.reuse and self.generation.engine == "shrinking" and (self.vllm is None or opaque):
            replies, first = self._generate_reusing(make)
        else:
            replies = self._generate(prompts, make, directions, opaque=opaque)
        outcome, nll, parse_errors = self.outcomes(prompts, replies)
        p_refusal, kl = self._first_token(make, first)
        nh = len(self.prompts.harmful)

        def per_class(lo: int, hi: int) -> ClassOutcome:
            o, v = outcome[lo:hi], nll[lo:hi]
            finite = v[torch.isfinite(v)]
            return ClassOutcome(n=hi - lo, refused=int((o == REFUSED).sum()), complied=int((o == COMPLIED).sum()),
                                degenerate=int((o == DEGENERATE).sum()), p_refusal=float(p_refusal[lo:hi].mean()),
                                reply_nll=float(finite.mean()) if finite.numel() else float("nan"))

        examples = {
            cls: [{"prompt": prompts[i], "response": replies[i], "outcome": OUTCOME_NAMES[int(outcome[i])],
                   "nll": None if not torch.isfinite(nll[i]) else round(float(nll[i]), 3)}
                  for i in range(lo, min(hi, lo + N_EXAMPLES))]
            for cls, lo, hi in (("harmful", 0, nh), ("harmless", nh, len(prompts)))
        }
        return Behaviour(harmful=per_class(0, nh), harmless=per_class(nh, len(prompts)),
                         kl_harmless=float(kl[nh:].mean()), parse_errors=parse_errors,
                         examples=examples)
