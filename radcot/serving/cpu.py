"""The CPU serving path of a student: lower precision and an early stop at the answer, opt-in and reported.

A flan-t5-small FiD student reading 10 passages and writing 150 tokens takes seconds per query on a CPU in
fp32. Two independent options make it cheaper; each changes what the student writes, so neither is ever
on by default, each is part of the served student's fingerprint (cache entries of one never answer for
another), and both are printed at start-up and shown by ``/v1/info``:

- ``precision``: ``fp32`` (default: the evaluated student), ``bf16`` (weights and activations in bfloat16;
  fast where the CPU has AVX512-BF16/AMX, slower than fp32 where it has not) or ``int8`` (dynamic
  quantisation of every ``nn.Linear``: int8 weights, activations quantised per batch; CPU only).
- ``stop_at_answer``: stop a CoT once it has written ``Answer:`` and the end of that sentence (``.``,
  ``!`` or ``?``). The RADCoT teacher's CoTs end there (``Rationale: ... Answer: ...``); a small student
  that does not stop by itself writes on to ``max_new_tokens``. The CoT is then a prefix of the full one.

``bench/serve.py --cpu-path`` measures both against fp32: exact-match rate of the greedy token ids and
token agreement, and the speed-up.

Example:
    >>> CpuPath("int8", stop_at_answer=True).label
    'int8+stop-at-answer'
"""
from __future__ import annotations

import dataclasses
from typing import Any

from radcot.records import RadcotError

#: the weight/activation precisions of the serving path; ``fp32`` is the evaluated student
PRECISIONS = ("fp32", "bf16", "int8")
#: where the answer starts in a RADCoT CoT
ANSWER_MARKER = "Answer:"


@dataclasses.dataclass(frozen=True)
class CpuPath:
    """How a student is run for serving: ``precision`` (:data:`PRECISIONS`) and ``stop_at_answer``."""

    precision: str = "fp32"
    stop_at_answer: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise RadcotError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.stop_at_answer, bool):
            raise TypeError(f"stop_at_answer must be a bool, got {type(self.stop_at_answer).__name__}")

    @property
    def label(self) -> str:
        """``fp32``, ``int8``, ``bf16+stop-at-answer``..."""
        return self.precision + ("+stop-at-answer" if self.stop_at_answer else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def prepare(student: Any, path: CpuPath, device: str) -> Any:
    """``student`` converted for ``path`` (in place for bf16; int8 replaces its T5 by a quantised copy).

    Raises:
        RadcotError: int8 on a non-CPU device (PyTorch's dynamic quantisation runs on CPUs only).
    """
    import torch

    if path.precision == "bf16":
        student.t5.to(torch.bfloat16)
    elif path.precision == "int8":
        if not str(device).startswith("cpu"):
            raise RadcotError(f"precision int8 runs on the CPU only (PyTorch dynamic quantisation); got device "
                              f"{device}: use --device cpu, or --precision bf16 on a GPU")
        student.t5 = torch.ao.quantization.quantize_dynamic(student.t5, {torch.nn.Linear}, dtype=torch.qint8)
    return student


def answer_done(text: str, marker: str = ANSWER_MARKER) -> bool:
    """Whether a CoT has written its answer: ``marker``, then text that ends a sentence.

    Example:
        >>> answer_done("Rationale: x is y.  Answer: y."), answer_done("Rationale: x is y."), answer_done("Answer:")
        (True, False, False)
    """
    i = text.find(marker)
    if i < 0:
        return False
    after = text[i + len(marker):].strip()
    return len(after) > 1 and after[-1] in ".!?"


def answer_stop(tokenizer: Any):
    """A ``transformers`` stopping criterion that ends each row at :func:`answer_done` (a new one per call)."""
    import torch
    import transformers

    ends = _sentence_end_tokens(tokenizer)

    class AnswerStop(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            last = input_ids[:, -1].cpu()
            rows = [r for r in range(input_ids.shape[0]) if int(last[r]) in ends]  # only rows that just ended a sentence
            if rows:
                texts = tokenizer.batch_decode(input_ids[rows, 1:], skip_special_tokens=True)
                for r, t in zip(rows, texts):
                    done[r] = answer_done(t)
            return done

    return transformers.StoppingCriteriaList([AnswerStop()])


_ENDS: dict[int, frozenset] = {}


def _sentence_end_tokens(tokenizer: Any) -> frozenset:
    """Ids of the tokens whose text ends with ``.``, ``!`` or ``?`` (computed once per tokenizer)."""
    key = id(tokenizer)
    if key not in _ENDS:
        vocab = tokenizer.get_vocab()
        pieces = tokenizer.convert_ids_to_tokens(list(vocab.values()))
        _ENDS[key] = frozenset(i for i, p in zip(vocab.values(), pieces) if p and p.rstrip()[-1:] in (".", "!", "?"))
    return _ENDS[key]


__all__ = ["ANSWER_MARKER", "PRECISIONS", "CpuPath", "answer_done", "answer_stop", "prepare"]
