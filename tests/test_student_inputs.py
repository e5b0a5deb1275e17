"""The student reads the official RADCoT input: same token ids as ZIZUN/RADCoT's src/data.py + Collator.

The official construction is rebuilt here as the official code does it (``Dataset.__getitem__`` and
``Collator.__call__``/``encode_passages`` of src/data.py), tokenised by a SentencePiece T5 tokenizer trained
offline (the flan-t5-shaped stand-in's, the same tokenizer class a flan-t5 checkpoint loads with), and compared
with :class:`radcot.student.data.FiDCollator` on real Cranfield queries and passages.
"""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

pytestmark = pytest.mark.fast

TEXT_MAXLENGTH = 300  # the paper's (train.sh / infer.sh --text_maxlength 300)


def official_inputs(question: str, ctxs: list[dict], n_context: int | None) -> list[str]:
    """The texts src/data.py's Dataset + Collator feed the FiD encoder for one example (verbatim logic)."""
    question = 'Answer the following question \"' + question + '\" based on the given passage.\n'
    passages = None
    if n_context is not None:
        f = " {} " + "\nGive the rationale before answering :"
        passages = [f.format(c['text']) for c in ctxs[:n_context]]
    if n_context == 0:
        passages = None
    if passages is None:  # Collator.append_question
        return [question]
    return [question + " " + t for t in passages]


def official_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """encode_passages: batch_encode_plus(max_length=text_maxlength, pad to max length, truncation=True)."""
    enc = tokenizer(texts, max_length=TEXT_MAXLENGTH, padding="max_length", truncation=True)
    return [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]


def radcot_ids(collator, example: dict, n_context: int) -> list[list[int]]:
    ii, am, pm = collator.encode_inputs([example], n_context=n_context)
    return [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(ii[0].tolist(), am[0].tolist())]


@pytest.fixture(scope="module")
def cranfield_texts(cranfield):
    docs = [json.loads(x) for x in (cranfield / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [json.loads(x) for x in (cranfield / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    return docs, queries


@pytest.fixture(scope="module")
def sp_tokenizer(cranfield_texts, tmp_path_factory):
    """A SentencePiece unigram T5 tokenizer (``spiece.model``, ``T5Tokenizer``) trained on Cranfield."""
    from radcot.student.data import OFFICIAL_TEMPLATE
    from radcot.student.standin import train_sentencepiece_tokenizer

    docs, queries = cranfield_texts
    texts = [d["text"] for d in docs[:600]] + [q["text"] for q in queries] + [OFFICIAL_TEMPLATE] * 20
    return train_sentencepiece_tokenizer(texts, tmp_path_factory.mktemp("spm"), vocab_size=1500)


def _example(queries, docs, i: int, n: int, titles: bool = False) -> dict:
    """Query ``i`` with ``n`` abstracts short enough for 300-token inputs (Cranfield's longest are not)."""
    short = [d for d in docs if len(d["text"].split()) < 120]
    ps = [{"doc_id": d["_id"], "title": d["title"] if titles else "", "text": d["text"]} for d in short[i * n:(i + 1) * n]]
    return {"query": queries[i]["text"], "passages": ps}


def test_default_input_ids_equal_the_official_code(sp_tokenizer, cranfield_texts):
    """12 queries x 3 passages that fit in 300 tokens: identical input ids, row by row (``</s>`` included)."""
    from radcot.student.data import FiDCollator

    docs, queries = cranfield_texts
    col = FiDCollator(sp_tokenizer, n_context=3, text_maxlength=TEXT_MAXLENGTH)  # the default template
    assert "\n" in official_inputs("q", [{"text": "p"}], 1)[0]  # the official text has newlines; T5 reads spaces
    compared = 0
    for i in range(12):
        ex = _example(queries, docs, i, 3)
        theirs = official_ids(sp_tokenizer, official_inputs(ex["query"], ex["passages"], 3))
        assert all(len(t) < TEXT_MAXLENGTH for t in theirs)  # these fit: no truncation on either side
        assert radcot_ids(col, ex, 3) == theirs
        compared += len(theirs)
    assert compared == 36


def test_a_long_passage_keeps_the_instruction(sp_tokenizer, cranfield_texts):
    """Documented difference: the official input loses its end (the instruction) to truncation; radcot cuts the
    passage and keeps the instruction. Both are 300 tokens with ``</s>`` last and start the same."""
    from radcot.student.data import FiDCollator

    docs, queries = cranfield_texts
    long_text = " ".join(d["text"] for d in docs[:6])
    ex = {"query": queries[0]["text"], "passages": [{"title": "", "text": long_text}]}
    (theirs,) = official_ids(sp_tokenizer, official_inputs(ex["query"], ex["passages"], 1))
    (ours,) = radcot_ids(FiDCollator(sp_tokenizer, n_context=1, text_maxlength=TEXT_MAXLENGTH), ex, 1)
    instruction = sp_tokenizer("Give the rationale before answering :", add_special_tokens=False)["input_ids"]
    eos = sp_tokenizer.eos_token_id
    assert len(theirs) == len(ours) == TEXT_MAXLENGTH and theirs[-1] == ours[-1] == eos
    assert ours[-1 - len(instruction):-1] == instruction and theirs[-1 - len(instruction):-1] != instruction
    head = len(sp_tokenizer(official_inputs(ex["query"], [], None)[0], add_special_tokens=False)["input_ids"])
    assert ours[:head + 50] == theirs[:head + 50]


def test_titles_are_read_before_the_text(sp_tokenizer, cranfield_texts):
    """Documented difference: radcot keeps a passage's title (the official code reads ``text`` only; MS MARCO
    passages have none): the input is the official one with ``title text`` as the passage."""
    from radcot.student.data import FiDCollator

    docs, queries = cranfield_texts
    ex = _example(queries, docs, 0, 2, titles=True)
    merged = [{"text": f"{p['title']} {p['text']}"} for p in ex["passages"]]
    col = FiDCollator(sp_tokenizer, n_context=2, text_maxlength=TEXT_MAXLENGTH)
    assert radcot_ids(col, ex, 2) == official_ids(sp_tokenizer, official_inputs(ex["query"], merged, 2))


def test_official_no_context_template_is_what_n_context_0_feeds(sp_tokenizer, cranfield_texts):
    """``--n_context 0`` in the official code feeds the question line alone (no instruction): the
    ``official-no-context`` template; radcot's own no-context default adds the instruction."""
    from radcot.student.data import NO_CONTEXT_TEMPLATE, FiDCollator

    docs, queries = cranfield_texts
    ex = _example(queries, docs, 3, 2)
    theirs = official_ids(sp_tokenizer, official_inputs(ex["query"], ex["passages"], 0))
    col = FiDCollator(sp_tokenizer, n_context=5, text_maxlength=TEXT_MAXLENGTH, template="official-no-context")
    assert radcot_ids(col, ex, 5) == theirs and len(theirs) == 1
    own = FiDCollator(sp_tokenizer, n_context=5, text_maxlength=TEXT_MAXLENGTH, template=NO_CONTEXT_TEMPLATE)
    assert col.input_texts(ex)[0] != own.input_texts(ex)[0]


def test_old_template_by_name_and_the_defaults(sp_tokenizer):
    """The radcot <= 0.2 template stays available by name; a config that records a template keeps it."""
    pytest.importorskip("transformers")
    from radcot.student.data import OFFICIAL_TEMPLATE, PASSAGE_PREFIX_TEMPLATE, FiDCollator, resolve_template
    from radcot.student.model import FiDConfig

    assert FiDConfig().template == OFFICIAL_TEMPLATE
    assert FiDConfig(template="passage-prefix").template == PASSAGE_PREFIX_TEMPLATE
    assert FiDConfig.from_dict({"template": PASSAGE_PREFIX_TEMPLATE}).template == PASSAGE_PREFIX_TEMPLATE
    col = FiDCollator(sp_tokenizer, n_context=1, template="passage-prefix")
    ex = {"query": "why do wings stall", "passages": [{"title": "", "text": "flow separates"}]}
    assert col.input_texts(ex) == ['Answer the following question "why do wings stall" based on the given passage. '
                                   'Passage: flow separates Give the rationale before answering :']
    with pytest.raises(ValueError, match="neither a template name"):
        resolve_template("oficial")


def test_query_braces_are_read_as_written(sp_tokenizer):
    """A query with braces is not doubled ('{{x}}') nor read as a placeholder."""
    from radcot.student.data import FiDCollator

    col = FiDCollator(sp_tokenizer, n_context=1)
    ex = {"query": "what is {x} in {passage}", "passages": [{"text": "a set"}]}
    assert col.input_texts(ex) == ['Answer the following question "what is {x} in {passage}" based on the given '
                                   'passage. a set Give the rationale before answering :']
