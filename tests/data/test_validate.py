"""Validation first: every bad input is one DataValidationError naming file, column and rows, raised
before anything is written (no Ray, no model needed: the stage fails before either)."""

from __future__ import annotations

import pandas as pd
import pytest

from irr_ray.cli import main
from irr_ray.data.config import DataConfig
from irr_ray.data.ingest import read_source
from irr_ray.data.stage import run_data_stage
from irr_ray.data.validate import validate_raw
from irr_ray.errors import DataValidationError
from tests.data.conftest import raw_frame


def _fails(tmp_path, source, *fragments, **config):
    out = tmp_path / "out"
    cfg = DataConfig(source=str(source), source_model=str(tmp_path / "no-model"), **config)
    with pytest.raises(DataValidationError) as err:
        run_data_stage(cfg, out)
    msg = str(err.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    assert not out.exists(), "nothing may be written to --out on a validation error"
    return msg


def test_valid_frame_passes(write_raw):
    validate_raw(read_source(str(write_raw(raw_frame()))), "error")


def test_missing_column(tmp_path, write_raw):
    src = write_raw(raw_frame().drop(columns=["adversarial"]))
    _fails(tmp_path, src, str(src), "missing required column", "adversarial")


def test_wrong_type_bool(tmp_path, write_raw):
    frame = raw_frame()
    frame["adversarial"] = frame["adversarial"].map({False: "no", True: "yes"})
    src = write_raw(frame)
    _fails(tmp_path, src, str(src), "`adversarial`", "true/false", "rows 0 ('no'), 1 ('no')", "more")


def test_wrong_type_prompt(tmp_path, write_raw):
    frame = raw_frame().astype({"prompt": object})
    frame.loc[4, "prompt"] = 17
    src = write_raw(frame, "raw.jsonl")
    _fails(tmp_path, src, str(src), "`prompt`", "strings", "rows 4 (17)")


def test_null_prompt(tmp_path, write_raw):
    frame = raw_frame()
    frame.loc[[2, 5], "prompt"] = None
    src = write_raw(frame)
    _fails(tmp_path, src, "`prompt`", "null", "rows 2, 5")


def test_unknown_label(tmp_path, write_raw):
    frame = raw_frame()
    frame.loc[[3, 7], "prompt_harm_label"] = ["maybe", "HARMFUL"]
    src = write_raw(frame, "raw.csv")
    _fails(tmp_path, src, str(src), "`prompt_harm_label`", "unknown labels", "rows 3 ('maybe'), 7 ('HARMFUL')",
           unknown_prompt_labels="error")


def test_unknown_prompt_labels_dropped_and_counted_by_default(write_raw):
    """The stage keeps harmful/unharmful rows; other prompt labels go with the nulls, counted."""
    from irr_ray.data.prepare import prepare_prompts

    frame = raw_frame()
    frame.loc[[3, 9], "prompt_harm_label"] = ["unknown", ""]
    table = read_source(str(write_raw(frame)))
    validate_raw(table, "drop")
    prompts, counts = prepare_prompts(table, seed=0, max_samples=None)
    assert counts["dropped"] == {"adversarial": 1, "null_prompt_label": 1,
                                 "invalid_prompt_label": {"unknown": 1, "": 1}}
    assert not prompts["row_id"].isin([3, 9]).any()
    assert counts["balanced"] == {"harmful": 7, "unharmful": 7}


def test_unknown_refusal_label(tmp_path, write_raw):
    frame = raw_frame()
    frame.loc[1, "response_refusal_label"] = "refused"
    _fails(tmp_path, write_raw(frame), "`response_refusal_label`", "rows 1 ('refused')")


def test_empty_class_after_filtering(tmp_path, write_raw):
    frame = raw_frame()
    frame.loc[frame["prompt_harm_label"] == "harmful", "adversarial"] = True  # only adversarial harmful rows
    _fails(tmp_path, write_raw(frame), "no harmful rows", "harmful=0", "non-adversarial")


def test_unreadable_file(tmp_path):
    src = tmp_path / "broken.parquet"
    src.write_bytes(b"this is not parquet")
    _fails(tmp_path, src, str(src), "cannot read as parquet")


def test_missing_and_unsupported_source(tmp_path):
    _fails(tmp_path, tmp_path / "nope.parquet", "no such file")
    txt = tmp_path / "raw.txt"
    txt.write_text("x")
    _fails(tmp_path, txt, "unsupported file type")


def test_directory_names_the_offending_file(tmp_path):
    src = tmp_path / "dir"
    src.mkdir()
    good, bad = raw_frame(), raw_frame()
    bad.loc[2, "response_refusal_label"] = "dunno"
    good.to_parquet(src / "a.parquet", index=False)
    bad.to_parquet(src / "b.parquet", index=False)
    table = read_source(str(src))
    assert len(table.frame) == 2 * len(good)
    # row 2 of b.parquet, reported inside that file (not as concatenated row 20)
    _fails(tmp_path, src, str(src / "b.parquet"), "rows 2 ('dunno')")


def test_cli_exit_code_and_one_line(tmp_path, write_raw, capsys):
    src = write_raw(raw_frame().drop(columns=["prompt_harm_label"]))
    out = tmp_path / "out"
    rc = main(["data", "--source", str(src), "--source-model", str(tmp_path / "m"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and err.startswith("irr-ray data: error:") and "prompt_harm_label" in err
    assert not out.exists()


def test_cli_bad_config_keys(tmp_path, write_raw, capsys):
    src = write_raw(raw_frame())
    base = ["data", "--source", str(src), "--source-model", "m", "--out", str(tmp_path / "o")]
    assert main([*base, "--set", "generation.beam=4"]) == 2
    assert "unknown key" in capsys.readouterr().err
    # vLLM takes whole GPUs, or none (its CPU build)
    assert main([*base, "--set", "generation.backend=vllm", "--set", "generation.num_gpus_per_actor=0.5"]) == 2
    assert "generation.num_gpus_per_actor=0.5" in capsys.readouterr().err
    assert main([*base, "--set", "judge.kind=wildguard"]) == 2
    assert "judge.num_gpus_per_actor=1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_prepare_renames_and_keeps_reference_labels(write_raw):
    from irr_ray.data.prepare import prepare_prompts

    frame = raw_frame()
    frame.loc[0, "response_refusal_label"] = None
    table = read_source(str(write_raw(frame)))
    prompts, counts = prepare_prompts(table, seed=0, max_samples=None)
    assert "response_refusal_label" not in prompts.columns
    by_id = frame.loc[prompts["row_id"]]
    got, want = prompts["wildguard_reference_label"], by_id["response_refusal_label"]
    assert got.isna().tolist() == want.isna().tolist() and got.isna().iloc[0]
    assert got.dropna().tolist() == want.dropna().tolist()
    assert counts["raw_rows"] == len(frame) and counts["balanced"] == {"harmful": 8, "unharmful": 8}
    assert not pd.Series(prompts["prompt"]).str.contains("pretend you are evil").any()  # adversarial dropped


@pytest.mark.parametrize("name", ["raw.jsonl", "raw.csv"])
def test_jsonl_and_csv_read_like_parquet(write_raw, name):
    from irr_ray.data.prepare import prepare_prompts

    frame = raw_frame()
    ref, _ = prepare_prompts(read_source(str(write_raw(frame))), seed=3, max_samples=10)
    table = read_source(str(write_raw(frame, name)))
    validate_raw(table, "error")
    got, _ = prepare_prompts(table, seed=3, max_samples=10)
    pd.testing.assert_frame_equal(got.astype(object), ref.astype(object))


def test_missing_source_model_fails_before_writing(tmp_path, write_raw):
    from irr_ray.errors import ConfigError

    cfg = DataConfig(source=str(write_raw(raw_frame())), source_model=str(tmp_path / "no-model"))
    with pytest.raises(ConfigError, match="no-model: no such Hugging Face model directory"):
        run_data_stage(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hub_source_reads_wildguardtrain_with_hf_token(monkeypatch):
    """``allenai/wildguardmix`` goes to the Hub (config wildguardtrain, split train, token from
    HF_TOKEN). No network here: a stand-in ``datasets`` module records the call."""
    import sys
    import types

    calls = []

    def load_dataset(name, config, split, token):
        calls.append((name, config, split, token))
        if token is None:
            raise RuntimeError("Dataset 'allenai/wildguardmix' is a gated dataset on the Hub.\nVisit its page.")
        return types.SimpleNamespace(to_pandas=raw_frame)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(DataValidationError, match=r"cannot load from the Hugging Face Hub: .* export HF_TOKEN") as err:
        read_source("allenai/wildguardmix")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("HF_TOKEN", "hf_stand_in")
    table = read_source("allenai/wildguardmix")
    assert calls[-1] == ("allenai/wildguardmix", "wildguardtrain", "train", "hf_stand_in")
    assert table.name == "allenai/wildguardmix[wildguardtrain/train]" and "hf_stand_in" not in table.name
    validate_raw(table, "error")
    assert table.content_hash == read_source("allenai/wildguardmix").content_hash  # content, not time
