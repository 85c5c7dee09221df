"""Layout of one study directory. Every stage reads and writes under it, so a study is one folder
that can be moved, resumed, reported and served (MLflow UI) as a whole::

    <study>/
      config.yaml            resolved study config (what ran)
      mlflow.db              MLflow tracking database (SQLite) — unless a server URI is configured
      mlartifacts/           MLflow artifacts (absolute artifact_location)
      data/                  train.parquet, holdout.parquet, manifest.json      (stage 1)
      sweep/                 Ray Tune experiment storage (trials, checkpoints)  (stage 2)
      checkpoints/<name>/    exported HF model dirs of the sweep's trials (+ trial.json)
      attacks/<name>/        attack.json, directions.safetensors, k0.json       (stage 3, dim)
      attacks/<name>/<attack>/  attack.json, attack_log.json, the attack's files  (stage 3, suite)
      attacks/<name>/profile.json  every attack's verdict, the strongest's         (stage 3)
      report.md, pareto.png  (stage 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyPaths:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> StudyPaths:
        return cls(Path(root).expanduser().resolve())

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def attacks(self) -> Path:
        return self.root / "attacks"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def attack_dir(self, model_name: str, attack: str = "dim") -> Path:
        """Where ``attack`` writes its result for one model: ``attacks/<model>/`` for the method's
        ``dim`` attack, ``attacks/<model>/<attack>/`` for the other attacks of the suite."""
        return self.attacks / model_name if attack == "dim" else self.attacks / model_name / attack

    def profile(self, model_name: str) -> Path:
        """``attacks/<model>/profile.json``: every attack's verdict and the strongest's."""
        return self.attacks / model_name / "profile.json"

    def checkpoint_dir(self, name: str) -> Path:
        return self.checkpoints / name
