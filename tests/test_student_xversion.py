"""Saved students load as the same model under transformers 4.57 and 5.x (issue 14), untied and tied heads,
including a flan-t5-shaped student trained by the pipeline's own train stage."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)
from _xversion import assert_same_logits_across_versions, logits_with_transformers4, probe_ids

torch = pytest.importorskip("torch")


def _head_and_embeddings(run_dir):
    from safetensors.torch import load_file

    sd = load_file(str(run_dir / "model.safetensors"))
    return sd.get("lm_head.weight"), sd["shared.weight"]


def test_untied_student_is_saved_untied_and_loads_untied(trained_untied_student):
    from radcot.student.model import FiDStudent, head_is_tied

    best = trained_untied_student / "best"
    cfg = json.loads((best / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["feed_forward_proj"] == "gated-gelu"
    head, emb = _head_and_embeddings(best)
    assert head is not None and not torch.equal(head, emb)
    student = FiDStudent.from_pretrained(best)
    assert not head_is_tied(student.t5) and student.t5.config.scale_decoder_outputs is False
    assert torch.equal(student.t5.lm_head.weight.detach(), head)


def test_untied_student_same_logits_under_transformers_4_and_5(trained_untied_student, tmp_path):
    """The flan-t5-style student after training: 4.57 and 5.x logits agree (atol 1e-4). With the config that
    transformers 5 writes by itself (tie_word_embeddings: true) 4.57 builds a different model: the check bites."""
    import shutil

    best = trained_untied_student / "best"
    worst = assert_same_logits_across_versions(best)
    print(f"untied student: max |logits 4.57 - logits 5.x| = {worst:.2e}")
    naive = tmp_path / "as-transformers5-writes-it"
    shutil.copytree(best, naive)
    cfg = json.loads((naive / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (naive / "config.json").write_text(json.dumps(cfg))
    enc, dec = probe_ids(best)
    from _xversion import logits_with_transformers5

    wrong = logits_with_transformers4(naive, enc, dec)[0]
    assert float((wrong - logits_with_transformers5(best, enc, dec)).abs().max()) > 1e-2


def test_tied_student_round_trips_across_versions(trained_student):
    """The tiny-t5 student (head tied to the embeddings, no output scaling, as transformers 5 builds it): saved
    with its head written out and tie_word_embeddings false; 4.57 and 5.x agree, 5.x re-ties the head."""
    from radcot.student.model import FiDStudent, head_is_tied

    best = trained_student / "best"
    assert json.loads((best / "config.json").read_text())["tie_word_embeddings"] is False
    head, emb = _head_and_embeddings(best)
    assert torch.equal(head, emb)
    student = FiDStudent.from_pretrained(best)
    assert student.t5.lm_head.weight is student.t5.shared.weight and head_is_tied(student.t5)
    assert_same_logits_across_versions(best)


def test_original_t5_with_scaling_stays_tied(tmp_path):
    """Original T5 (tied head, d_model**-0.5 rescale): saved with tie_word_embeddings true; both versions agree."""
    import transformers

    from radcot.student.model import decoder_output_scaling, portable_head_state

    cfg = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                                decoder_start_token_id=0)
    t5 = transformers.T5ForConditionalGeneration(cfg)
    assert decoder_output_scaling(t5) and portable_head_state(t5) == (None, True)
    from radcot.demo.tiny import train_t5_tokenizer
    from radcot.student.model import FiDStudent

    tok = train_t5_tokenizer(["a b c d e f g"] * 20, vocab_size=64)
    FiDStudent(t5, tok).save_pretrained(tmp_path / "t5")
    assert json.loads((tmp_path / "t5" / "config.json").read_text())["tie_word_embeddings"] is True
    assert_same_logits_across_versions(tmp_path / "t5")


def test_loading_an_untied_student_prints_no_tie_advice(trained_untied_student, caplog, capfd):
    """transformers 5 warns "set tie_word_embeddings=False" on every untied T5 load; radcot's loader drops that
    warning only (the bare transformers load still shows it, so the test can fail)."""
    import transformers

    from radcot.student.model import FiDStudent

    best = trained_untied_student / "best"
    transformers.T5ForConditionalGeneration.from_pretrained(str(best))
    bare = capfd.readouterr().err + caplog.text
    assert "tie_word_embeddings=False" in bare
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        FiDStudent.from_pretrained(best)
    assert "tie_word_embeddings=False" not in capfd.readouterr().err + caplog.text


@pytest.mark.slow
@pytest.mark.java
def test_student_trained_by_the_pipeline_same_logits_under_transformers_4_and_5(demo_world, tmp_path):
    """A flan-t5-shaped student (T5 v1.1 flags, separate lm_head, SentencePiece) trained for a few steps by
    ``Pipeline.run`` (its shared train stage, as a DL run trains flan-t5) is saved untied, its head moved by
    training, and transformers 4.57 and 5.x compute the same logits from it."""
    from radcot.data.readers import read_corpus
    from radcot.pipeline import Pipeline
    from radcot.student.data import NO_CONTEXT_TEMPLATE, PASSAGE_TEMPLATE
    from radcot.student.standin import build_flan_t5_standin

    texts = [d.contents for d in read_corpus(demo_world)][:600] + [PASSAGE_TEMPLATE, NO_CONTEXT_TEMPLATE] * 20
    start = build_flan_t5_standin(texts, tmp_path / "flan-t5-small", size="small", vocab_size=600)
    overrides = [f"params.data={demo_world}", "dataset.limit_queries=3", "training_queries.limit=24",
                 f"student.model={start}", "student.n_context=2", "student.generate.max_new_tokens=8",
                 "student.context_retriever=bm25",
                 "student.train={max_steps: 4, batch_size: 4, lr: 1.0e-3, eval_every: 0, save_every: 4, "
                 "eval_max_examples: 2, text_maxlength: 48, target_maxlength: 24}",
                 "rows=[{name: bm25}, {name: radcot, student: {context: true}}]", "evaluation.teacher_row=null",
                 "evaluation.k=20"]
    runs = tmp_path / "runs"
    Pipeline.from_yaml(Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml", overrides, runs_dir=runs,
                       show_progress=False).run()
    (best,) = (runs / "_shared").glob("train-*/run/best")
    cfg = json.loads((best / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["feed_forward_proj"] == "gated-gelu"
    head, emb = _head_and_embeddings(best)
    assert head is not None and not torch.equal(head, emb)
    assert not torch.equal(head, _head_and_embeddings(start)[0]), "training did not move the head"
    worst = assert_same_logits_across_versions(best)
    print(f"pipeline-trained flan-t5-shaped student: max |logits 4.57 - logits 5.x| = {worst:.2e}")
