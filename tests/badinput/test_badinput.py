"""Bad inputs over every command, as a careless user types them (table-driven).

Each case runs the CLI in-process (``irr_ray.cli.main``) in a fresh working directory and asserts:
the exit code (2); one line on stderr, ``irr-ray <command>: ...``, naming the culprit; no
traceback; nothing created, changed or removed in the working directory (the user's files hashed
before and after, so no partial output either) nor in the inputs; and that the check ran before
any expensive work (the ``no_expensive_work`` markers raise if model loading, training,
generation, Ray or a server starts). The policy under test lives in :mod:`irr_ray.preflight`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from irr_ray.cli import main
from irr_ray.utils.files import file_sha256


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` (hidden ones included) with its content hash ("dir" for directories)."""
    out: dict[str, str] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else file_sha256(p)
    return out


def write(name: str, text: str) -> Callable[[Path, dict], dict]:
    def _setup(cwd: Path, ctx: dict) -> dict:
        target = cwd / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.format(**ctx))
        return {}
    return _setup


def mkdir(*names: str) -> Callable[[Path, dict], dict]:
    def _setup(cwd: Path, ctx: dict) -> dict:
        for n in names:
            (cwd / n).mkdir(parents=True)
        return {}
    return _setup


def busy_port(cwd: Path, ctx: dict) -> dict:
    (cwd / "study").mkdir()
    (cwd / "study" / "mlflow.db").write_bytes(b"")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return {"port": s.getsockname()[1], "_keep": s}


def chain(*fns: Callable[[Path, dict], dict]) -> Callable[[Path, dict], dict]:
    def _setup(cwd: Path, ctx: dict) -> dict:
        extra: dict = {}
        for fn in fns:
            extra.update(fn(cwd, {**ctx, **extra}))
        return extra
    return _setup


USER_FILE = write("f", "my notes\n")
FOREIGN_DIR = write("d/notes.txt", "keep me\n")
TRAIN = ["train", "--condition", "cov_kd", "--data-dir", "{data}", "--set", "epochs=0"]
ATTACK = ["attack", "--data-dir", "{data}", "--k-max", "1"]
EVAL = ["eval", "--data-dir", "{data}"]
DATA = ["data", "--source", "{source}"]
# A study on the organism's models (no organism stage): what `sweep` and `run` read.
STUDY = ("name: t\nstudy_dir: s\nsource_model: {good}\nbase_model: {good}\ndata: {{source: {source}}}\n"
         "train: {{epochs: 1}}\nstages: [data, sweep, attack, report]\n")
BAD_YAML = "name: t\ntrain:\n  lr: [1, 2\n  epochs: 3\n"


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: list[str]  # substrings of the one stderr line (the culprit)
    setup: Callable[[Path, dict], dict] | None = None
    extra: dict = field(default_factory=dict)


CASES = [
    # --- train
    Case("train-out-is-user-file", [*TRAIN, "--model", "{good}", "--out", "f"], ["--out f", "existing file"], USER_FILE),
    Case("train-out-foreign-dir", [*TRAIN, "--model", "{good}", "--out", "d"], ["--out d", "non-empty directory"],
         FOREIGN_DIR),
    Case("train-out-unwritable", [*TRAIN, "--model", "{good}", "--out", "/proc/x"], ["/proc/x", "not writable"]),
    Case("train-truncated-weights", [*TRAIN, "--model", "{models}/trunc", "--out", "o"],
         ["trunc/model.safetensors", "truncated"]),
    Case("train-random-weights", [*TRAIN, "--model", "{models}/rand", "--out", "o"],
         ["rand/model.safetensors", "not a safetensors file"]),
    Case("train-model-missing-dot-path", [*TRAIN, "--model", "./nope", "--out", "o"], ["./nope", "does not exist"]),
    Case("train-model-missing-home-path", [*TRAIN, "--model", "~/irr-ray-no-such-model", "--out", "o"],
         ["~/irr-ray-no-such-model", "does not exist"]),
    Case("train-model-no-config", [*TRAIN, "--model", "{models}/noconfig", "--out", "o"], ["noconfig", "config.json"]),
    Case("train-model-no-chat-template", [*TRAIN, "--model", "{models}/nochat", "--out", "o"],
         ["nochat", "chat template"]),
    Case("train-unsupported-family", [*TRAIN, "--model", "{models}/bert", "--out", "o"],
         ["unsupported architecture", "bert"]),
    Case("train-data-dir-missing", ["train", "--model", "{good}", "--data-dir", "nodata", "--out", "o"],
         ["--data-dir", "nodata"]),
    Case("train-bad-set-value", [*TRAIN, "--model", "{good}", "--out", "o", "--set", "lr=fast"],
         ["`lr`", "--set lr=fast"]),
    Case("train-unknown-condition", ["train", "--condition", "cov_kdd", "--model", "{good}", "--data-dir", "{data}",
                                     "--out", "o"], ["cov_kdd", "unknown condition"]),
    Case("train-config-is-directory", [*TRAIN, "--model", "{good}", "--out", "o", "--config", "cfgdir"],
         ["cfgdir", "is a directory"], mkdir("cfgdir")),
    Case("train-yaml-syntax-line", [*TRAIN, "--model", "{good}", "--out", "o", "--config", "bad.yaml"],
         ["bad.yaml:4:", "invalid YAML"], write("bad.yaml", BAD_YAML)),
    Case("train-empty-refusal-token", [*TRAIN, "--model", "{good}", "--out", "o", "--set", "eval.refusal_tokens=['']"],
         ["refusal token", "encodes to nothing"]),
    # --- attack
    Case("attack-out-is-user-file", [*ATTACK, "--model", "{good}", "--out", "f"], ["--out f", "existing file"],
         USER_FILE),
    Case("attack-out-foreign-dir", [*ATTACK, "--model", "{good}", "--out", "d"], ["non-empty directory"], FOREIGN_DIR),
    Case("attack-truncated-weights", [*ATTACK, "--model", "{models}/trunc", "--out", "o"], ["truncated"]),
    Case("attack-random-weights", [*ATTACK, "--model", "{models}/rand", "--out", "o"], ["not a safetensors file"]),
    Case("attack-local-models-path", [*ATTACK, "--model", "models/nope", "--out", "o"],
         ["models/nope", "does not exist", "no hub lookup"], mkdir("models")),
    Case("attack-source-model-missing", [*ATTACK, "--model", "{good}", "--source-model", "/no/such/model",
                                         "--out", "o"], ["--source-model", "/no/such/model"]),
    Case("attack-out-unwritable", [*ATTACK, "--model", "{good}", "--out", "/proc/x"], ["/proc/x", "not writable"]),
    Case("attack-unknown-attack", [*ATTACK, "--model", "{good}", "--out", "o", "--attack", "abliterat"],
         ["--attack 'abliterat'", "unknown attack"]),
    Case("attack-suite-unknown-attack", [*ATTACK, "--model", "{good}", "--out", "o", "--set", "suite=[dim,rdoo]"],
         ["suite", "unknown attack 'rdoo'"]),
    Case("attack-budget-zero", [*ATTACK, "--model", "{good}", "--out", "o", "--attack", "rdo", "--set",
                                "rdo.budgets=[0,1]"], ["rdo.budgets", "budgets must be ≥ 1"]),
    Case("attack-budgets-not-increasing", [*ATTACK, "--model", "{good}", "--out", "o", "--attack", "finetune",
                                           "--set", "finetune.budgets=[10,5]"], ["finetune.budgets", "increasing"]),
    Case("attack-negative-kl-threshold", [*ATTACK, "--model", "{good}", "--out", "o", "--set", "kl_threshold=-1"],
         ["kl_threshold", "--set kl_threshold=-1"]),
    Case("attack-data-without-holdout", ["attack", "--data-dir", "{only_train}", "--model", "{good}", "--out", "o"],
         ["holdout.parquet"]),
    Case("attack-unsupported-family", [*ATTACK, "--model", "{models}/bert", "--out", "o"],
         ["unsupported architecture"]),
    # --- eval
    Case("eval-out-is-user-file", [*EVAL, "--model", "{good}", "--out", "f"], ["--out f", "existing file"], USER_FILE),
    Case("eval-hub-shaped-missing-model", [*EVAL, "--model", "models/nope", "--out", "o"],
         ["models/nope", "not in the Hugging Face cache"]),
    Case("eval-out-in-proc", [*EVAL, "--model", "{good}", "--out", "/proc/x"], ["/proc/x", "not writable"]),
    Case("eval-model-is-a-file", [*EVAL, "--model", "f", "--out", "o"], ["model f", "is a file"], USER_FILE),
    Case("eval-truncated-weights", [*EVAL, "--model", "{models}/trunc", "--out", "o"], ["truncated"]),
    # --- data
    Case("data-source-model-local-missing", [*DATA, "--source-model", "models/nope", "--out", "o"],
         ["models/nope", "does not exist"], mkdir("models")),
    Case("data-source-model-hub-shaped-missing", [*DATA, "--source-model", "nobody/nope", "--out", "o"],
         ["nobody/nope", "not in the Hugging Face cache"]),
    Case("data-truncated-source-model", [*DATA, "--source-model", "{models}/trunc", "--out", "o"], ["truncated"]),
    Case("data-random-source-model", [*DATA, "--source-model", "{models}/rand", "--out", "o"],
         ["not a safetensors file"]),
    Case("data-out-is-user-file", [*DATA, "--source-model", "{good}", "--out", "f"], ["existing file"], USER_FILE),
    Case("data-out-foreign-dir", [*DATA, "--source-model", "{good}", "--out", "d"], ["non-empty directory"],
         FOREIGN_DIR),
    Case("data-out-unwritable", [*DATA, "--source-model", "{good}", "--out", "/proc/x"], ["not writable"]),
    Case("data-source-missing", ["data", "--source", "./prompts.parquet", "--source-model", "{good}", "--out", "o"],
         ["./prompts.parquet", "does not exist"]),
    Case("data-bad-set-value", [*DATA, "--source-model", "{good}", "--out", "o", "--set", "generation.batch_size=0"],
         ["generation.batch_size", "--set generation.batch_size=0"]),
    # --- organism build
    Case("organism-negative-seed", ["organism", "build", "--out", "o", "--seed", "-1"], ["--seed -1"]),
    Case("organism-out-is-user-file", ["organism", "build", "--out", "f"], ["--out f", "existing file"], USER_FILE),
    Case("organism-out-foreign-dir", ["organism", "build", "--out", "d"], ["non-empty directory"], FOREIGN_DIR),
    Case("organism-out-unwritable", ["organism", "build", "--out", "/proc/x"], ["not writable"]),
    Case("organism-unknown-key", ["organism", "build", "--out", "o", "--set", "bogus=1"], ["bogus", "unknown key"]),
    # --- sweep
    Case("sweep-misspelt-points-to-evaluate", ["sweep", "--config", "study.yaml"],
         ["sweep.points_to_evaluate", "cov_kdd"],
         write("study.yaml", STUDY + "sweep: {{points_to_evaluate: [cov_kdd]}}\n")),
    Case("sweep-misspelt-space-condition", ["sweep", "--config", "study.yaml"], ["sweep.space.condition", "kd_onyl"],
         write("study.yaml", STUDY + "sweep: {{space: {{condition: {{type: choice, values: [cov_kd, kd_onyl]}}}}}}\n")),
    Case("sweep-zero-epochs", ["sweep", "--config", "study.yaml", "--set", "train.epochs=0"], ["train.epochs"],
         write("study.yaml", STUDY)),
    Case("sweep-organism-not-built", ["sweep", "--config", "study.yaml"], ["build the organism first"],
         write("study.yaml", "name: t\nstudy_dir: s\norganism: {{seed: 0}}\n")),
    Case("sweep-config-missing", ["sweep", "--config", "nope.yaml"], ["nope.yaml", "not found"]),
    # --- run
    Case("run-misspelt-points-to-evaluate", ["run", "study.yaml"], ["cov_kdd"],
         write("study.yaml", STUDY + "sweep: {{points_to_evaluate: [cov_kdd]}}\n")),
    Case("run-yaml-syntax-line", ["run", "bad.yaml"], ["bad.yaml:4:"], write("bad.yaml", BAD_YAML)),
    Case("run-config-is-directory", ["run", "cfgdir"], ["cfgdir", "is a directory"], mkdir("cfgdir")),
    Case("run-study-dir-is-user-file", ["run", "study.yaml", "--study-dir", "f"], ["f", "existing file"],
         chain(USER_FILE, write("study.yaml", STUDY))),
    Case("run-source-model-missing", ["run", "study.yaml"], ["source_model", "nope", "does not exist"],
         write("study.yaml", STUDY.replace("source_model: {good}", "source_model: ./nope"))),
    Case("run-corrupt-base-model", ["run", "study.yaml"], ["trunc", "truncated"],
         write("study.yaml", STUDY.replace("base_model: {good}", "base_model: {models}/trunc"))),
    Case("run-bad-set-value", ["run", "study.yaml", "--set", "sweep.num_samples=many"],
         ["sweep.num_samples", "--set sweep.num_samples=many"], write("study.yaml", STUDY)),
    Case("run-negative-organism-seed", ["run", "study.yaml"], ["organism.seed"],
         write("study.yaml", "name: t\nstudy_dir: s\norganism: {{seed: -1}}\n")),
    # --- attack-all, report, ui
    Case("attack-all-study-missing", ["attack-all", "--study", "nostudy"], ["--study", "nostudy", "does not exist"]),
    Case("attack-all-corrupt-source-model", ["attack-all", "--study", "st", "--data-dir", "{data}",
                                             "--source-model", "{models}/rand"], ["not a safetensors file"],
         mkdir("st")),
    Case("report-study-missing", ["report", "--study", "nostudy", "--no-mlflow"], ["nostudy"]),
    Case("ui-port-busy", ["ui", "--study", "study", "--port", "{port}"], ["--port", "{port}"], busy_port),
    Case("ui-port-out-of-range", ["ui", "--study", "study", "--port", "70000"], ["70000"],
         chain(mkdir("study"), write("study/mlflow.db", ""))),
    Case("ui-mlflow-port-out-of-range", ["ui", "--study", "study", "--port", "0", "--mlflow-port", "70000"],
         ["--mlflow-port 70000"], chain(mkdir("study"), write("study/mlflow.db", ""))),
    Case("ui-study-missing", ["ui", "--study", "nostudy"], ["nostudy", "not found"]),
    Case("ui-study-without-attacks", ["ui", "--study", "study", "--port", "0", "--mlflow-port", "0"],
         ["study/attacks", "no attack results"], chain(mkdir("study"), write("study/mlflow.db", ""))),
]


def assert_fails_safely(case: Case, inputs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture) -> None:
    """Run ``case`` from a fresh working directory: exit 2, one stderr line ``irr-ray <command>: …``
    naming the culprit (``case.expect``), no traceback, nothing written and nothing lost."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ctx = {k: str(v) for k, v in inputs.items()}
    extra = case.setup(cwd, ctx) if case.setup else None
    if isinstance(extra, dict):  # a setup may add placeholders (a free port …)
        ctx.update({k: v for k, v in extra.items() if not k.startswith("_")})
    before = snapshot(cwd, inputs["root"], inputs["organism"])

    code = main([a.format(**ctx) for a in case.argv])

    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    command = case.argv[0]
    assert len(lines) == 1 and lines[0].startswith(f"irr-ray {command}: "), err
    for needle in case.expect:
        assert needle.format(**ctx) in lines[0], (needle, lines[0])
    assert snapshot(cwd, inputs["root"], inputs["organism"]) == before  # nothing written, nothing lost


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_safely(case: Case, inputs: dict, no_expensive_work, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert_fails_safely(case, inputs, tmp_path, monkeypatch, capsys)


def test_suite_covers_every_command() -> None:
    commands = {c.argv[0] for c in CASES}
    assert commands >= {"train", "attack", "eval", "data", "organism", "sweep", "run", "attack-all", "report", "ui"}
    assert len(CASES) >= 40


def test_kl_threshold_above_one_is_accepted_on_purpose() -> None:
    """KL is unbounded: a threshold above 1 is a deliberate, looser filter (10 disables it in
    tests/attack/test_fast_families.py), not a typo for a probability. Negative values are refused."""
    from irr_ray.attack.config import AttackConfig

    assert AttackConfig(kl_threshold=1.5).kl_threshold == 1.5


def test_markers_catch_work_on_valid_input(inputs: dict, no_expensive_work, tmp_path: Path) -> None:
    """Control: with valid input the command gets past its checks and hits a marker, so a bad-input
    case that passes above was rejected before the work, not by the marker."""
    from tests.badinput.conftest import ExpensiveWorkStarted

    with pytest.raises(ExpensiveWorkStarted):
        main(["train", "--condition", "cov_kd", "--model", str(inputs["good"]), "--data-dir", str(inputs["data"]),
              "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
