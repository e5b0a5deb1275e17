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
