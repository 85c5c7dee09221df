"""The data stage: validate -> prepare -> generate -> judge -> split, each sub-stage resumable.

Layout of ``out_dir``::

    train.parquet, holdout.parquet, manifest.json       the study dataset (ARCHITECTURE.md contract)
    .work/prepared-<key>/prompts.parquet                 selected prompts (row_id, prompt, labels)
    .work/generations-<key>/generations.parquet          row_id, response
    .work/judgements-<key>/judgements.parquet            row_id + the four judge columns
    .work/partial-<key>/part-*.parquet                   checkpoints of an unfinished generate+judge run
    .work/partial-gen-<key>/part-*.parquet               the same for generation alone (pools run one
                                                         after the other when they do not fit at once)

Each key hashes the inputs and the config that change that sub-stage's result (resource knobs
such as actor counts are left out) and, for prepare, the selection rule's version
(``PREPARE_VERSION``: a cache from before prompts were deduplicated is never reused), chained
through the previous key. A finished sub-stage is a directory renamed into place, so a rerun with
the same inputs + config reuses it, and a changed config recomputes only from the first sub-stage
whose key changed (new judge phrases reuse the generations). While generating and judging,
finished rows are checkpointed every ``checkpoint_rows`` rows, so an interrupted run only
processes the rows it had not finished. The manifest, written last, records which sub-stages
were computed or reused (``stages``), how many rows this invocation generated, judged and resumed
from checkpoints (``run``), and what prompt dedup dropped (``counts.dedup``).

Validation runs before anything is written: a bad source (missing columns, wrong types, unknown
labels, a class empty after keeping non-adversarial labelled rows) leaves ``out_dir`` untouched.
An error that only judging can reveal (``--filter-train`` empties a class) leaves the finished
split as it was and keeps the ``.work`` cache, so the rerun without it generates nothing.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from irr_ray.config import config_dict, stable_hash
from irr_ray.contracts import DataManifest
from irr_ray.data.config import DataConfig
from irr_ray.data.ingest import read_source
from irr_ray.data.prepare import PREPARE_VERSION, class_counts, prepare_prompts
from irr_ray.data.split import filter_train, stratified_split, to_table
from irr_ray.data.validate import validate_raw
from irr_ray.errors import ConfigError, IrrRayError
from irr_ray.judges.base import JUDGE_COLUMNS, judge_spec
from irr_ray.utils.files import atomic_dir, atomic_path, file_sha256, tree_sha256

log = logging.getLogger(__name__)

WORK = ".work"
OUTPUTS = ("train.parquet", "holdout.parquet")
# Generation settings that change the responses (actor counts and CPU/GPU reservations do not).
_GEN_RESULT_FIELDS = ("backend", "batch_size", "max_new_tokens", "dtype", "vllm")


def model_content_hash(model: str) -> str:
    """Content hash of a local model directory; a hub id stands for itself."""
    p = Path(model).expanduser()
    if p.is_dir() or model.startswith((".", "/", "~")):
        if not (p / "config.json").is_file():
            raise ConfigError(f"source model {model}: no such Hugging Face model directory (no config.json)")
        return tree_sha256(p)
    return f"hub:{model}"


def stage_keys(cfg: DataConfig, source_hash: str, model_hash: str, judge: dict[str, Any]) -> dict[str, str]:
    gen = config_dict(cfg.generation)
    gen_result = {k: gen[k] for k in _GEN_RESULT_FIELDS if cfg.generation.backend == "vllm" or k != "vllm"}
    gen_result["device"] = "gpu" if cfg.generation.num_gpus_per_actor > 0 else "cpu"
    prepare = stable_hash({"source": source_hash, "seed": cfg.seed, "max_samples": cfg.max_samples,
                           "version": PREPARE_VERSION})
    generate = stable_hash({"prepare": prepare, "model": model_hash, "generation": gen_result})
    judged = stable_hash({"generate": generate, "judge": judge})
    split = stable_hash({"judge": judged, "seed": cfg.seed, "train_frac": cfg.train_frac,
                         "filter_train": cfg.filter_train, "rebalance": cfg.rebalance_after_filter})
    return {"prepare": prepare, "generate": generate, "judge": judged, "split": split}


def _write_parquet_dir(final_dir: Path, name: str, frame: pd.DataFrame) -> Path:
    with atomic_dir(final_dir) as tmp:
        frame.to_parquet(tmp / name, index=False)
    return final_dir / name


def _finished(out: Path, key: str) -> DataManifest | None:
    """The manifest if ``out`` already holds the split for ``key`` with intact outputs (a manifest of
    another schema version, or unreadable, means: not finished — the stage recomputes)."""
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = DataManifest.read(manifest_path)
    except IrrRayError:
        return None
    if manifest.keys.get("split") != key:
        return None
    for name in OUTPUTS:
        if not (out / name).is_file() or manifest.outputs.get(name) != file_sha256(out / name):
            return None
    return manifest


GEN_COLUMNS = ("row_id", "response")
JUDGED_COLUMNS = ("row_id", "response", *JUDGE_COLUMNS)


class PartWriter:
    """Checkpoints pipeline output as it streams: every ``flush_rows`` rows become one part file
    (written to a temporary name, then renamed), so an interrupted run resumes where it stopped."""

    def __init__(self, directory: Path, flush_rows: int, columns: tuple[str, ...] = JUDGED_COLUMNS) -> None:
        self.directory, self.flush_rows, self.columns = directory, flush_rows, list(columns)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._pending: list[pd.DataFrame] = []
        self._n = len(list(directory.glob("part-*.parquet")))

    @staticmethod
    def read(directory: Path) -> pd.DataFrame | None:
        parts = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else None

    def add(self, batch: pd.DataFrame) -> None:
        self._pending.append(batch[self.columns])
        if sum(len(b) for b in self._pending) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        frame = pd.concat(self._pending, ignore_index=True)
        final = self.directory / f"part-{self._n:05d}.parquet"
        with atomic_path(final) as tmp:
            frame.to_parquet(tmp, index=False)
        self._n += 1
        self._pending = []


def _checkpointed_run(cfg: DataConfig, rows: pd.DataFrame, partial_dir: Path, columns: tuple[str, ...],
                      generator, judge, counters: dict[str, int]) -> pd.DataFrame:
    """Run the rows not yet in ``partial_dir`` through the pools, checkpointing as they stream out;
    return all rows (earlier checkpoints + new) with ``columns``, sorted by row_id."""
    from irr_ray.data.pipeline import run_actor_pipeline

    done = PartWriter.read(partial_dir)
    if done is not None:
        done = done[done["row_id"].isin(rows["row_id"])].drop_duplicates("row_id")
        counters["resumed_rows"] += len(done)
        log.info("data: resuming from %s: %d of %d rows already done", partial_dir.name, len(done), len(rows))
    todo = rows if done is None else rows[~rows["row_id"].isin(done["row_id"])]
    new = None
    if len(todo):
        writer = PartWriter(partial_dir, cfg.checkpoint_rows, columns)
        try:
            new = run_actor_pipeline(todo, generator, judge, progress=cfg.progress, sink=writer.add)
        finally:
            writer.flush()  # keep what finished, also on an interrupt
        if generator is not None:
            counters["generated_rows"] += len(new)
        if judge is not None:
            counters["judged_rows"] += len(new)
    result = pd.concat([f[list(columns)] for f in (done, new) if f is not None], ignore_index=True)
    return result.sort_values("row_id", kind="stable").reset_index(drop=True)


def _generate_and_judge_substages(cfg: DataConfig, prompts: pd.DataFrame, work: Path, keys: dict[str, str],
                                  spec: dict[str, Any], stages: dict[str, str],
                                  counters: dict[str, int]) -> tuple[Path, Path]:
    """Reuse or compute the generations and judgements on Ray Data; return their files.

    Both missing: one streaming pipeline (generation pool -> judge pool) if both pools fit on the
    cluster at once, else generation to completion, then judging. Records "computed"/"reused" in
    ``stages`` and the rows generated / judged / resumed from checkpoints in ``counters``.
    """
    gen_dir = work / f"generations-{keys['generate']}"
    judge_dir = work / f"judgements-{keys['judge']}"
    gen_file, judge_file = gen_dir / "generations.parquet", judge_dir / "judgements.parquet"
    stages["generate"] = "reused" if gen_file.is_file() else "computed"
    stages["judge"] = "reused" if judge_file.is_file() and gen_file.is_file() else "computed"
    if stages["judge"] == "reused":
        return gen_file, judge_file

    import ray

    from irr_ray.data.pipeline import ensure_ray, plan_pools
    from irr_ray.generation.backends import generator_udf
    from irr_ray.judges.base import JudgeActor, judge_engine

    ensure_ray(cfg.ray)
    need_gen = stages["generate"] == "computed"
    pools = {"generation": cfg.generation, "judge": cfg.judge} if need_gen else {"judge": cfg.judge}
    together = plan_pools(pools, ray.cluster_resources()) if cfg.ray.check_resources else True
    generator = None
    if need_gen:
        udf, kwargs = generator_udf(cfg.generation, cfg.source_model, cfg.seed)
        generator = (udf, kwargs, cfg.generation)
    engine = judge_engine(cfg.judge.model_copy(update={"model": spec.get("model", cfg.judge.model)}), cfg.seed)
    judge = (JudgeActor, {"spec": spec, "engine": engine}, cfg.judge)
    rows = prompts[["row_id", "prompt"]]

    if need_gen and not together:  # generation pool alone, then the judge pool alone
        partial = work / f"partial-gen-{keys['generate']}"
        responses = _checkpointed_run(cfg, rows, partial, GEN_COLUMNS, generator, None, counters)
        _write_parquet_dir(gen_dir, "generations.parquet", responses)
        shutil.rmtree(partial, ignore_errors=True)
        generator = None
    if generator is None:
        rows = rows.merge(pd.read_parquet(gen_file), on="row_id", validate="one_to_one")
    partial = work / f"partial-{keys['judge']}"
    result = _checkpointed_run(cfg, rows, partial, JUDGED_COLUMNS, generator, judge, counters)
    if generator is not None:
        _write_parquet_dir(gen_dir, "generations.parquet", result[list(GEN_COLUMNS)])
    _write_parquet_dir(judge_dir, "judgements.parquet", result[["row_id", *JUDGE_COLUMNS]])
    shutil.rmtree(partial, ignore_errors=True)
    return gen_file, judge_file


def run_data_stage(cfg: DataConfig, out_dir: str | Path) -> Path:
    """Build ``train.parquet``, ``holdout.parquet`` and ``manifest.json`` in ``out_dir``; return it."""
    if not cfg.source:
        raise ConfigError("data.source is required (--source, or `source:` in the config)")
    if not cfg.source_model:
        raise ConfigError("data.source_model is required (--source-model, or `source_model:` in the config)")
    out = Path(out_dir).expanduser().resolve()

    # 1. read + validate + select prompts: in memory, nothing written yet.
    table = read_source(cfg.source, cfg.hf_config, cfg.hf_split)
    validate_raw(table, cfg.unknown_prompt_labels)
    prompts, counts = prepare_prompts(table, cfg.seed, cfg.max_samples)
    if counts["dropped"]["invalid_prompt_label"]:
        log.warning("data: %s: dropped rows whose prompt_harm_label is not harmful/unharmful/null: %s "
                    "(set unknown_prompt_labels=error to reject such files)", table.name,
                    counts["dropped"]["invalid_prompt_label"])
    # the source model as loading will read it (weights, tokenizer, family): before any work is written
    from irr_ray.preflight import check_model, looks_like_hub_id

    if not Path(cfg.source_model).expanduser().exists() and not looks_like_hub_id(cfg.source_model):
        raise ConfigError(f"source model {cfg.source_model}: no such Hugging Face model directory (the path does "
                          "not exist; a local path, so no hub lookup)")
    check_model(cfg.source_model, "data.source_model / --source-model")
    model_hash = model_content_hash(cfg.source_model)
    local_model = Path(cfg.source_model).expanduser()
    if local_model.is_dir():  # actors may run elsewhere (another cwd, a job's working dir): absolute path
        cfg = cfg.model_copy(update={"source_model": str(local_model.resolve())})
    spec = judge_spec(cfg.judge, cfg.source_model)
    keys = stage_keys(cfg, table.content_hash, model_hash, spec)
    done = _finished(out, keys["split"])
    if done is not None:
        log.info("data: %s is up to date (key %s); nothing recomputed", out, keys["split"])
        done.stages = {name: "reused" for name in keys}
        done.run = {"generated_rows": 0, "judged_rows": 0, "resumed_rows": 0}
        done.write(out / "manifest.json")
        return out

    work = out / WORK
    stages: dict[str, str] = {}

    # 2. prepared prompts
    prep_dir = work / f"prepared-{keys['prepare']}"
    stages["prepare"] = "reused" if (prep_dir / "prompts.parquet").is_file() else "computed"
    if stages["prepare"] == "computed":
        _write_parquet_dir(prep_dir, "prompts.parquet", prompts)

    # 3-4. generations, judgements (one streaming Ray Data pipeline when both are missing)
    counters = {"generated_rows": 0, "judged_rows": 0, "resumed_rows": 0}
    gen_file, judge_file = _generate_and_judge_substages(cfg, prompts, work, keys, spec, stages, counters)
    responses, judged = pd.read_parquet(gen_file), pd.read_parquet(judge_file)
    full = (prompts.merge(responses, on="row_id", validate="one_to_one")
                   .merge(judged, on="row_id", validate="one_to_one")
                   .sort_values("row_id", kind="stable").reset_index(drop=True))

    # 5. split by prompt (+ train-only agreement filter) -> outputs, manifest last
    train, holdout = stratified_split(full, cfg.train_frac, cfg.seed)
    filter_stats: dict[str, Any] = {"applied": cfg.filter_train}
    if cfg.filter_train:
        before = len(train)
        train, stats = filter_train(train, cfg.rebalance_after_filter, cfg.seed)
        filter_stats.update(stats, train_before=before, train_after=len(train))
    stages["split"] = "computed"
    (out / "manifest.json").unlink(missing_ok=True)  # never leave a manifest describing other files
    for name, frame in zip(OUTPUTS, (train, holdout)):
        with atomic_path(out / name) as tmp:
            pq.write_table(to_table(frame), tmp)
    manifest = build_manifest(cfg, table, model_hash, spec, keys, stages, counts, full, train, holdout,
                              filter_stats, out)
    manifest.run = counters  # what this invocation computed (0 generated rows = all reused)
    manifest.write(out / "manifest.json")
    log.info("data: wrote %s (train %d, holdout %d)", out, len(train), len(holdout))
    return out


def _refusal_rates(frame: pd.DataFrame) -> dict[str, float]:
    rates = frame.groupby("prompt_harm_label")["predicted_refusal"].mean()
    return {k: round(float(v), 4) for k, v in rates.items()}


def build_manifest(cfg: DataConfig, table, model_hash: str, spec: dict, keys: dict, stages: dict,
                   counts: dict, full: pd.DataFrame, train: pd.DataFrame, holdout: pd.DataFrame,
                   filter_stats: dict, out: Path) -> DataManifest:
    """Everything needed to trust and reproduce the split (no secrets: tokens never enter config)."""
    return DataManifest(
        source={"name": table.name, "files": list(table.files), "content_hash": table.content_hash},
        source_model={"path": cfg.source_model, "hash": model_hash},
        judge=spec,
        seed=cfg.seed,
        config=config_dict(cfg),
        keys=keys,
        stages=stages,
        counts={**counts, "judged": class_counts(full), "train": class_counts(train),
                "holdout": class_counts(holdout)},
        filter=filter_stats,
        judge_parse_errors=int(full["judge_parse_error"].sum()),
        refusal_rate_by_class=_refusal_rates(full),
        outputs={name: file_sha256(out / name) for name in OUTPUTS},
    )
