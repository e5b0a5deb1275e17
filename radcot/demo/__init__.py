"""The offline demo's own code: the synthetic world, its knowledge-base teacher and its tiny pointer student.

Everything here exists only for the embedded demo (``make demo``, ``pipelines/demo.yaml``, ``data/demo``), which
runs the whole RADCoT pipeline in minutes on 2 CPU cores with no internet, no LLM and no pretrained weights.
To get there it swaps two of the paper's parts for stand-ins, and says so:

- **The teacher** is :class:`~radcot.demo.kb.KBTeacher` (backend ``kb``), a knowledge-base STAND-IN for an LLM
  that knows the world: it writes ``Rationale: ... Answer: ...`` from the world's facts, so its CoTs are an
  upper bound for what a knowledgeable teacher gives, not LLM outputs.
- **The student is a demo architecture, not the paper's.** RADCoT's student is a pretrained Fusion-in-Decoder
  flan-t5 (``google/flan-t5-*``), which can read and copy before distillation starts. The demo's is a 1.6M-
  parameter T5 trained from scratch (:mod:`radcot.demo.tiny`) with a copy mechanism
  (:class:`~radcot.demo.pointer.PointerT5ForConditionalGeneration`), an input cue for reading
  (:func:`~radcot.demo.pointer.context_frequency`) and copy augmentation in training
  (:class:`~radcot.demo.augment.CopyAugmenter`): without them a student this small, trained this briefly,
  learns the teacher's language but not to read its passages. The product's student code knows none of this;
  the demo plugs in through the student's hooks (:mod:`radcot.student.hooks`).

Modules: :mod:`~radcot.demo.world` (``radcot make-world``), :mod:`~radcot.demo.kb` (the ``kb`` teacher),
:mod:`~radcot.demo.tiny` (``tiny-t5`` model specs), :mod:`~radcot.demo.pointer`, :mod:`~radcot.demo.augment`
(``TrainConfig.augment="copy"``), :mod:`~radcot.demo.answers` (answer rates: ``radcot table --answers``) and
:mod:`~radcot.demo.preset` (``radcot train --preset demo``: the demo student's settings in one place).

Nothing in the product imports this package except the CLI and the pipeline layer (``radcot.rehearse``); the
lower layers name it only in lazy registries (teacher backend ``kb``, model builder ``tiny-t5``, augmenter
``copy``). Everything is imported lazily: ``import radcot.demo`` imports no torch.

Example:
    >>> from radcot.demo import make_world, KBTeacher  # doctest: +SKIP
    >>> make_world("/tmp/world", seed=13, scale=0.1)  # doctest: +SKIP
    >>> KBTeacher("/tmp/world").answer("where was Velkor Danth born")  # doctest: +SKIP
"""
from __future__ import annotations

from radcot._deps import lazy_exports

_EXPORTS = {
    "make_world": "radcot.demo.world",
    "WorldConfig": "radcot.demo.world",
    "KnowledgeBase": "radcot.demo.world",
    "KBTeacher": "radcot.demo.kb",
    "build_tiny_t5": "radcot.demo.tiny",
    "train_t5_tokenizer": "radcot.demo.tiny",
    "PointerT5ForConditionalGeneration": "radcot.demo.pointer",
    "CopyAugmenter": "radcot.demo.augment",
    "answer_rate": "radcot.demo.answers",
    "experiment_answer_rates": "radcot.demo.answers",
    "world_answers": "radcot.demo.answers",
    "context_recall": "radcot.demo.answers",
    "StudentPreset": "radcot.demo.preset",
    "PRESETS": "radcot.demo.preset",
    "get_preset": "radcot.demo.preset",
}

__all__ = sorted(_EXPORTS)

__getattr__, _ = lazy_exports("radcot.demo", _EXPORTS, globals())


def __dir__():
    return __all__
