"""Sentiment data: a local templated review set (CPU runs, tests) and IMDB (cluster), one schema.

Both sources write ``DIR/train.parquet`` and ``DIR/holdout.parquet`` with columns
``text: str`` and ``label: int`` (1 = positive, 0 = negative — IMDB's own coding), plus
``DIR/manifest.json`` (config, counts per class and split, content hashes). Every later stage reads
only these files, so the local set and IMDB take the same code path.

**The local set.** A review is 1–2 neutral sentences ("i watched the silent harbor last week with my
sister .") and an odd number ``k`` of *aspect* sentences ("the pacing was really dull ."). Every
sentence draws from one shared vocabulary: titles, aspects, intensifiers and the sentiment
adjectives appear in both classes. An aspect sentence's polarity is its adjective's valence,
flipped by a negation ("the pacing was not dull" is positive). A review's label is the majority
polarity of its aspect sentences, and a review mixes both polarities (each sentence agrees with the
label with probability ``agree_prob``, conditioned on the majority); with probability
``verdict_prob`` the review closes with its verdict ("i give it 8 out of 10 ."), which a language
model can only predict well if it has kept track of the review's sentiment so far. So sentiment is a property of
phrases in context, not of single words: positive words occur in negative reviews (negated or in
the minority) and a bag-of-words model cannot read the label off exactly.

Deterministic for a config (numpy ``default_rng(seed)``); texts are unique and the split is
stratified. The build is cached: a directory whose manifest records the same config hash and whose
files still match their recorded hashes is returned as is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from irr_ray.config import config_dict, stable_hash
from irr_ray.errors import DataValidationError, IrrRayError
from irr_ray.sentiment.config import SentimentDataConfig
from irr_ray.utils.files import atomic_dir, build_once, file_sha256, write_json_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "holdout")
COLUMNS = ("text", "label")
FORMAT_VERSION = 1  # bump when the generator changes what a config produces

# --- the shared vocabulary -------------------------------------------------------------------------
TITLES = (
    "the silent harbor", "midnight garden", "a quiet storm", "the last orchard", "broken compass",
    "the glass river", "summer of echoes", "the paper king", "northern lights", "the long road home",
    "city of lanterns", "the iron bridge", "falling upward", "the winter guest", "red canyon",
    "the hollow crown", "second chances", "the blue hour",
)
WHEN = ("last week", "yesterday", "on friday", "over the weekend", "last night", "on a rainy sunday")
WHO = ("my sister", "my brother", "a friend", "my parents", "my partner", "some coworkers", "my kids")
GENRES = ("drama", "thriller", "comedy", "romance", "western", "mystery", "family film", "war film")
PLACES = ("a small town", "paris", "the desert", "a hospital", "the mountains", "a fishing village", "space")
YEARS = ("1987", "1994", "2003", "2011", "2016", "2021")
NEUTRAL_TEMPLATES = (
    "i watched {title} {when} with {who} .",
    "{title} is a {genre} from {year} .",
    "the film is set in {place} .",
    "it runs about {minutes} minutes .",
    "i saw {title} in a cinema {when} .",
    "the story follows a family in {place} .",
)
ASPECTS = (
    "acting", "plot", "script", "story", "soundtrack", "music", "pacing", "ending", "cast", "dialogue",
    "camera work", "direction", "humour", "villain", "lead actor", "lead actress", "editing", "score",
    "special effects", "costumes", "characters", "first act", "final scene", "premise",
)
POSITIVE = (
    "great", "wonderful", "brilliant", "superb", "charming", "gripping", "moving", "clever", "beautiful",
    "delightful", "fantastic", "excellent", "memorable", "touching", "stunning", "fresh",
)
NEGATIVE = (
    "awful", "dull", "boring", "terrible", "clumsy", "weak", "tedious", "bland", "messy", "forgettable",
    "painful", "lazy", "predictable", "flat", "annoying", "poor",
)
INTENSIFIERS = ("really", "truly", "quite", "very", "rather", "genuinely", "simply", "")
VERBS = ("was", "is", "felt", "seemed")
NEGATIONS = ("not", "far from", "hardly", "never")
VERDICTS = {
    1: ("overall , i would recommend it .", "i give it {good} out of 10 .", "in the end i really enjoyed it .",
        "i would happily watch it again .", "well worth the ticket ."),
    0: ("overall , i would not recommend it .", "i give it {bad} out of 10 .", "in the end i really regretted it .",
        "i would never watch it again .", "not worth the ticket ."),
}
ASPECT_TEMPLATES = (
    "the {aspect} {verb} {neg} {adv} {adj} .",
    "the {aspect} {verb} {neg} {adj} , just {adj2} .",
    "i found the {aspect} {neg} {adv} {adj} , even {adj2} .",
    "i thought the {aspect} {verb} {neg} {adv} {adj} .",
    "honestly , the {aspect} {verb} {neg} {adv} {adj} .",
    "to me the {aspect} {verb} {neg} {adv} {adj} .",
    "and the {aspect} {verb} {neg} {adv} {adj} .",
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _neutral_sentence(rng: np.random.Generator) -> str:
    return _pick(rng, NEUTRAL_TEMPLATES).format(
        title=_pick(rng, TITLES), when=_pick(rng, WHEN), who=_pick(rng, WHO), genre=_pick(rng, GENRES),
        year=_pick(rng, YEARS), place=_pick(rng, PLACES), minutes=str(int(rng.integers(80, 181))),
    )


def _aspect_sentence(rng: np.random.Generator, positive: bool, negation_prob: float) -> str:
    """A sentence of the given polarity: a positive adjective, or a negated negative one (and vice
    versa); a second adjective, where the template has one, states the polarity directly."""
    negated = bool(rng.random() < negation_prob)
    adjective_positive = positive != negated
    text = _pick(rng, ASPECT_TEMPLATES).format(
        aspect=_pick(rng, ASPECTS), verb=_pick(rng, VERBS), neg=_pick(rng, NEGATIONS) if negated else "",
        adv=_pick(rng, INTENSIFIERS), adj=_pick(rng, POSITIVE if adjective_positive else NEGATIVE),
        adj2=_pick(rng, POSITIVE if positive else NEGATIVE),  # "not dull , just brilliant"
    )
    return " ".join(text.split())  # drop the double spaces of empty slots


def _verdict(rng: np.random.Generator, label: int) -> str:
    """A closing sentence that states the review's overall verdict (a score or a recommendation)."""
    return _pick(rng, VERDICTS[label]).format(good=str(int(rng.integers(7, 11))), bad=str(int(rng.integers(1, 5))))


def _polarities(rng: np.random.Generator, label: int, k: int, agree_prob: float) -> np.ndarray:
    """``k`` (odd) sentence polarities whose majority is ``label``; each agrees w.p. ``agree_prob``."""
    while True:
        agree = rng.random(k) < agree_prob
        if 2 * int(agree.sum()) > k:
            return np.where(agree, label, 1 - label)


def _review(rng: np.random.Generator, label: int, cfg: SentimentDataConfig) -> str:
    k = int(rng.choice(cfg.aspect_sentences))
    sentences = [_aspect_sentence(rng, bool(p), cfg.negation_prob) for p in _polarities(rng, label, k, cfg.agree_prob)]
    n_neutral = int(rng.integers(cfg.neutral_sentences[0], cfg.neutral_sentences[1] + 1))
    for _ in range(n_neutral):
        sentences.insert(int(rng.integers(len(sentences) + 1)) if sentences else 0, _neutral_sentence(rng))
    if rng.random() < cfg.verdict_prob:
        sentences.append(_verdict(rng, label))
    return " ".join(sentences)


def generate_local_reviews(cfg: SentimentDataConfig) -> pd.DataFrame:
    """``n_reviews`` unique reviews, half positive, in a seeded random order: columns ``text``, ``label``."""
    rng = np.random.default_rng(cfg.seed)
    seen: set[str] = set()
    rows: list[tuple[str, int]] = []
    per_class = {0: cfg.n_reviews // 2, 1: cfg.n_reviews - cfg.n_reviews // 2}
    for label, count in per_class.items():
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            if attempts > 20 * count:
                raise IrrRayError(f"could not draw {count} unique reviews; lower data.n_reviews")
            text = _review(rng, label, cfg)
            if text not in seen:
                seen.add(text)
                rows.append((text, label))
                made += 1
    order = rng.permutation(len(rows))
    return pd.DataFrame([rows[i] for i in order], columns=list(COLUMNS))


def load_imdb(cfg: SentimentDataConfig) -> dict[str, pd.DataFrame]:
    """IMDB through ``datasets.load_dataset("imdb")`` (train → train, test → holdout), each split
    subsampled class-stratified to ``imdb_max_train`` / ``imdb_max_holdout`` with ``seed``.
    Needs the dataset in the local HF cache or network access (cluster); never called in tests."""
    from datasets import load_dataset

    try:
        ds = load_dataset(cfg.imdb_name)
    except Exception as exc:  # network / cache errors come in many types
        raise IrrRayError(f"could not load dataset {cfg.imdb_name!r} ({type(exc).__name__}: {exc}); "
                          "use data.source=local off-line") from None
    out = {}
    for split, hf_split, cap in (("train", "train", cfg.imdb_max_train), ("holdout", "test", cfg.imdb_max_holdout)):
        df = ds[hf_split].to_pandas()[list(COLUMNS)]
        out[split] = _stratified_cap(df, cap, cfg.seed)
    return out


def _stratified_cap(df: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    if cap is None or len(df) <= cap:
        return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    per_class = cap // 2
    parts = [g.sample(n=min(per_class, len(g)), random_state=seed) for _, g in df.groupby("label")]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def split_holdout(df: pd.DataFrame, holdout_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Class-stratified train / holdout split (each class contributes the same fraction)."""
    rng = np.random.default_rng(seed + 1)
    holdout_idx = []
    for label in (0, 1):
        idx = np.flatnonzero(df["label"].to_numpy() == label)
        n_hold = int(round(holdout_fraction * len(idx)))
        holdout_idx.extend(rng.permutation(idx)[:n_hold].tolist())
    is_hold = np.zeros(len(df), dtype=bool)
    is_hold[holdout_idx] = True
    return {"train": df[~is_hold].reset_index(drop=True), "holdout": df[is_hold].reset_index(drop=True)}


def validate_split(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check the ``text``/``label`` contract; return the frame with exactly those columns."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(f"{where}: missing column(s) {missing}; expected text (str), label (0/1)")
    bad = ~df["label"].isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataValidationError(f"{where}: row {row} has label {df['label'].tolist()[row]!r}; expected 0 or 1")
    empty = df["text"].map(lambda t: not isinstance(t, str) or not t.strip())
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataValidationError(f"{where}: row {row} has an empty or non-string text")
    if df["label"].nunique() < 2:
        raise DataValidationError(f"{where}: a single class; both labels 0 and 1 are needed")
    return df[list(COLUMNS)].astype({"label": "int64"})


def _cache_key(cfg: SentimentDataConfig) -> str:
    return stable_hash({"data": config_dict(cfg), "format": FORMAT_VERSION})


def cached_manifest(out_dir: Path, key: str) -> dict[str, Any] | None:
    """The manifest of a finished build with ``key`` whose files are intact, else ``None``."""
    import json

    manifest_path = out_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("key") != key:
        return None
    for name, digest in manifest.get("files", {}).items():
        f = out_dir / name
        if not f.is_file() or file_sha256(f) != digest:
            return None
    return manifest


def build_sentiment_data(cfg: SentimentDataConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write ``train.parquet``, ``holdout.parquet``, ``manifest.json`` under ``out_dir`` (atomically);
    return the manifest. A finished build with the same config is returned without recomputing."""
    out = Path(out_dir).expanduser().resolve()
    key = _cache_key(cfg)
    manifest, found = build_once(out, lambda: cached_manifest(out, key), lambda: _write_data(cfg, out, key))
    if found:
        log.info("sentiment data: cached at %s (key %s)", out, key)
        return manifest
    log.info("sentiment data: wrote %s (%s)", out, manifest["counts"])
    return manifest


def _write_data(cfg: SentimentDataConfig, out: Path, key: str) -> dict[str, Any]:
    """Generate or load the splits, validate them and write them with their manifest (atomically)."""
    if cfg.source == "local":
        splits = split_holdout(generate_local_reviews(cfg), cfg.holdout_fraction, cfg.seed)
    else:
        splits = load_imdb(cfg)
    splits = {name: validate_split(df, f"{cfg.source}:{name}") for name, df in splits.items()}
    with atomic_dir(out) as tmp:
        files = {}
        for name, df in splits.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
            files[f"{name}.parquet"] = file_sha256(tmp / f"{name}.parquet")
        manifest = {
            "key": key,
            "source": cfg.source,
            "config": config_dict(cfg),
            "counts": {name: {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()}
                       for name, df in splits.items()},
            "files": files,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest


def read_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    """One split (``train`` | ``holdout``) of a built sentiment data directory, validated."""
    if split not in SPLITS:
        raise IrrRayError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = Path(data_dir).expanduser() / f"{split}.parquet"
    if not path.is_file():
        raise IrrRayError(f"{path} not found; build it with `irr-ray sentiment build --out DIR`")
    return validate_split(pd.read_parquet(path), str(path))
