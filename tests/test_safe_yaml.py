"""YAML configs: duplicate keys refused with both lines, alias bombs and oversized files refused fast (issue 26)."""
from __future__ import annotations

import time

import pytest

from radcot.experiment.config import PipelineError, apply_overrides, load_config
from radcot.safe_yaml import MAX_BYTES, YAMLConfigError, YAMLSyntaxError, load_yaml, parse_yaml

pytestmark = pytest.mark.fast

#: 9 levels of 9 aliases: 387,420,489 strings once expanded, from 700 bytes
BOMB = "experiment: bomb\nparams:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")) + "rows: [{name: bm25}]\n"


def test_duplicate_keys_name_both_lines(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("experiment: x\nretriever:\n  k1: 0.9\n  b: 0.4\n  k1: 1.2\nrows: []\n")
    with pytest.raises(PipelineError, match=r"p.yaml:5: duplicate key 'k1' \(first at line 3\)"):
        load_config(p)
    p.write_text("experiment: x\nrows: []\nexperiment: y\n")
    with pytest.raises(PipelineError, match=r"p.yaml:3: duplicate key 'experiment' \(first at line 1\)"):
        load_config(p)
    with pytest.raises(YAMLConfigError, match="<string>:1: duplicate key 'a'"):
        parse_yaml("{a: 1, b: 2, a: 3}")


def test_merge_keys_may_still_be_overridden():
    data = parse_yaml("base: &b {lr: 0.1, steps: 3}\nrow:\n  <<: *b\n  lr: 0.2\n")
    assert data["row"] == {"lr": 0.2, "steps": 3}
    assert parse_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}  # a few aliases are fine


def test_duplicate_key_in_an_included_file(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\nstudent: {model: a}\nseed: 2\n")
    (tmp_path / "p.yaml").write_text("include: base.yaml\nexperiment: x\n")
    with pytest.raises(PipelineError, match=r"base.yaml:3: duplicate key 'seed' \(first at line 1\)"):
        load_config(tmp_path / "p.yaml")


def test_alias_bomb_refused_in_well_under_a_second(tmp_path):
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    assert len(BOMB) < 1000
    t = time.perf_counter()
    with pytest.raises(PipelineError, match=r"bomb.yaml:\d+: this value's aliases expand to more than 100,000 values"):
        load_config(p)
    assert time.perf_counter() - t < 0.5
    with pytest.raises(YAMLConfigError, match="recursive alias"):
        parse_yaml("a: &a [1, *a]\n")


def test_oversized_file_refused(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("experiment: x\n# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(PipelineError, match=r"big.yaml: 1,000,0\d\d bytes, over the 1,000,000-byte limit"):
        load_config(p)
    assert load_yaml(p, max_bytes=2 * MAX_BYTES) == {"experiment": "x"}


def test_syntax_errors_keep_file_and_line(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("experiment: x\nrows: [a\n")
    with pytest.raises(PipelineError, match=r"p.yaml:3: not valid YAML"):
        load_config(p)
    with pytest.raises(YAMLSyntaxError):
        parse_yaml("a: [1\n")
    (tmp_path / "bin.yaml").write_bytes(b"a: \xff\n")
    with pytest.raises(YAMLConfigError, match="not UTF-8"):
        load_yaml(tmp_path / "bin.yaml")


def test_set_values_are_guarded_too():
    assert apply_overrides({"a": {}}, ["a.b=[1, 2]", "a.c=not: yaml: ["])["a"] == {"b": [1, 2], "c": "not: yaml: ["}
    with pytest.raises(PipelineError, match=r"--set a.b:1: duplicate key 'x'"):
        apply_overrides({"a": {}}, ["a.b={x: 1, x: 2}"])
    with pytest.raises(PipelineError, match="aliases expand"):
        apply_overrides({}, ["p=" + BOMB])


def test_a_json_train_config_with_a_duplicate_key_is_refused(tmp_path):
    """`radcot train --config c.json` with "lr" twice trained with the last value, silently (the YAML reader
    refuses duplicates since this round; the JSON one did not)."""
    from radcot.student.train import TrainConfig

    p = tmp_path / "c.json"
    p.write_text('{"lr": 0.001, "max_steps": 5, "lr": 0.0001}\n')
    need = {"data": "d", "model": "m", "out": "o"}
    with pytest.raises(ValueError, match=r"c.json: duplicate key 'lr' in one JSON object"):
        TrainConfig.from_file(p, **need)
    p.write_text('{"lr": 0.001, "eval_every": 0}\n')
    assert TrainConfig.from_file(p, **need).lr == 0.001
