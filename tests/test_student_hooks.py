"""The student's hooks (radcot.student.hooks): the model-class hook (plain T5 by default, the class a checkpoint
names, checkpoints of radcot 0.2 mapped), the FiD hooks, model builders and training augmenters; and the fence
around the demo (no demo names in the core student, no core module importing radcot.demo)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from _student_fixtures import _one_thread, cranfield_cots, cranfield_distill, cranfield_retriever  # noqa: F401
from radcot.records import DataFormatError
from radcot.student import hooks

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(vocab_size=300, d_model=32, layers=1, heads=2, d_ff=64, dropout=0.0, seed=0)
TEXTS = ["where was Ann born", "Ann was born in Oslo.", "Bob lives in Rome.", "Rationale: Ann. Answer: Oslo."] * 30
EXAMPLES = [{"query": "where was Ann born", "passages": [{"title": "", "text": "Ann was born in Oslo."},
                                                          {"title": "", "text": "Bob lives in Rome."}]},
            {"query": "where does Bob live", "passages": [{"title": "", "text": "Bob lives in Rome."}]}]
LAYERS = ["radcot/records.py", "radcot/data", "radcot/retrieval", "radcot/teacher", "radcot/student",
          "radcot/expansion.py"]


# ------------------------------------------------------------------------------------------------ the fence


@pytest.mark.fast
def test_the_core_student_names_no_demo_model():
    """`git grep -n 'pointer\\|copy_bias\\|context_frequency' radcot/student/` finds nothing (issue #24)."""
    hits = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "radcot" / "student").rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"pointer|copy_bias|context_frequency", line)]
    assert hits == []


#: modules at the pipeline layer or above (the demo sits beside the pipeline; radcot.analysis was its old home)
HIGH = ("radcot.demo", "radcot.analysis", "radcot.pipeline", "radcot.report", "radcot.rehearse", "radcot.experiment",
        "radcot.tuning", "radcot.serving", "radcot.cli")


@pytest.mark.fast
def test_no_layer_below_the_pipeline_imports_the_demo_or_anything_above_it():
    """records, data, retrieval, teacher, student and expansion may name radcot.demo in lazy registries (strings)
    but never import it (radcot 0.2's student/augment.py imported radcot.analysis)."""
    bad = []
    for layer in LAYERS:
        root = REPO / layer
        for path in ([root] if root.is_file() else sorted(root.rglob("*.py"))):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                bad += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                        if any(n == h or n.startswith(h + ".") for h in HIGH)]
    assert bad == []


@pytest.mark.fast
def test_registries_resolve_by_name_and_import_path():
    assert hooks.resolve_builder("tiny-t5") == hooks.resolve_builder("tiny-t5:d_model=64") == "radcot.demo.tiny:build"
    assert hooks.resolve_builder("tiny-t5x") is None and hooks.resolve_builder("google/flan-t5-base") is None
    assert hooks.load_object("radcot.student.hooks:FiDHooks") is hooks.FiDHooks
    for bad, match in (("no_colon", "not an import path"), ("radcot.nosuchmodule:x", "cannot import"),
                       ("radcot.student.hooks:NoSuch", "has no attribute")):
        with pytest.raises(hooks.HookError, match=match):
            hooks.load_object(bad)
    with pytest.raises(hooks.HookError, match="unknown augmenter 'nope'.*copy"):
        hooks.make_augmenter("nope", [])


# ------------------------------------------------------------------------------------------------ model class


def _plain_t5(path: Path) -> Path:
    """A stock (no radcot keys) tiny T5 directory."""
    from radcot.demo.tiny import build_tiny_t5

    return build_tiny_t5(TEXTS, path, **SIZE)


def _pointer_student(path: Path, features: int = 1):
    from radcot.demo.tiny import build_tiny_t5
    from radcot.student.model import FiDStudent

    build_tiny_t5(TEXTS, path / "init", pointer=1, context_frequency=features, **SIZE)
    student = FiDStudent.from_pretrained(path / "init", n_context=2, text_maxlength=16, target_maxlength=8)
    student.save_pretrained(path / "saved")
    return student, path / "saved"


def test_a_plain_t5_checkpoint_loads_through_the_default_hooks(tmp_path):
    torch = pytest.importorskip("torch")
    from radcot.student.model import FiDStudent

    student = FiDStudent.from_pretrained(_plain_t5(tmp_path / "t5"), n_context=2, text_maxlength=16)
    assert type(student.t5).__name__ == "T5ForConditionalGeneration"
    assert "radcot_model_class" not in json.loads((tmp_path / "t5" / "config.json").read_text())
    ii, am, pm = student.collator.encode_inputs(EXAMPLES)
    assert hooks.fid_hook(student.t5, "fid_input_embeds")(ii, am, pm) is None
    assert hooks.fid_hook(student.t5, "fid_model_kwargs")(ii.reshape(2, -1)) == {}
    # the plain path is the stock T5's: the same logits as calling it on the FiD encoder states directly
    enc, mask = student.encode(ii, am, pm)
    dec = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        ours = student(ii, am, pm, decoder_input_ids=dec).logits
        stock = student.t5(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec).logits
    assert torch.allclose(ours, stock, atol=1e-5)


def test_a_demo_checkpoint_names_its_class_and_loads_it(tmp_path):
    torch = pytest.importorskip("torch")
    from radcot.student.model import FiDStudent

    student, saved = _pointer_student(tmp_path)
    config = json.loads((saved / "config.json").read_text())
    assert config["radcot_model_class"] == "radcot.demo.pointer:PointerT5ForConditionalGeneration"
    again = FiDStudent.from_pretrained(saved).eval()
    assert type(again.t5).__name__ == "PointerT5ForConditionalGeneration"
    ii, am, pm = again.collator.encode_inputs(EXAMPLES)
    ids = torch.arange(6).reshape(2, 3)
    assert torch.equal(hooks.fid_hook(again.t5, "fid_model_kwargs")(ids)["copy_ids"], ids)
    assert hooks.fid_hook(again.t5, "fid_input_embeds")(ii, am, pm).shape == (*ii.shape, 32)
    assert torch.equal(again.generate(ii, am, pm, max_new_tokens=6), student.eval().generate(ii, am, pm,
                                                                                              max_new_tokens=6))


#: what radcot 0.2 wrote into a pointer student's config.json (and no radcot_model_class)
OLD_FLAGS = {"radcot_pointer": True, "radcot_pointer_debias": 0, "radcot_context_frequency": 10,
             "architectures": ["PointerT5ForConditionalGeneration"]}


def _as_radcot_0_2(saved: Path, **flags) -> Path:
    path = saved / "config.json"
    config = json.loads(path.read_text())
    del config["radcot_model_class"]
    config.update({**OLD_FLAGS, **flags})
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return saved


def test_a_checkpoint_saved_by_radcot_0_2_still_loads_as_the_pointer_t5(tmp_path):
    torch = pytest.importorskip("torch")
    from radcot.student.model import FiDStudent

    student, saved = _pointer_student(tmp_path)
    old = FiDStudent.from_pretrained(_as_radcot_0_2(saved)).eval()
    assert type(old.t5).__name__ == "PointerT5ForConditionalGeneration" and old.t5.context_frequency is not None
    ii, am, pm = old.collator.encode_inputs(EXAMPLES)
    assert torch.equal(old.generate(ii, am, pm, max_new_tokens=6),
                       student.eval().generate(ii, am, pm, max_new_tokens=6))


def test_a_radcot_0_2_checkpoint_of_the_dropped_debiased_pointer_is_refused_with_the_reason(tmp_path):
    from radcot.student.model import FiDStudent

    _, saved = _pointer_student(tmp_path, features=0)
    with pytest.raises(DataFormatError, match=r"config.json: .*radcot_pointer_debias: 2 .*dropped.*radcot 0.2.x"):
        FiDStudent.from_pretrained(_as_radcot_0_2(saved, radcot_pointer_debias=2, radcot_context_frequency=0))


def test_a_config_naming_a_class_that_does_not_import_is_a_clear_error(tmp_path):
    from radcot.student.model import FiDStudent

    path = _plain_t5(tmp_path / "t5") / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "radcot_model_class": "mypkg.models:MyT5"}))
    with pytest.raises(DataFormatError, match=r"config.json: expected an importable model class, found "
                                              r"radcot_model_class: 'mypkg.models:MyT5'.*cannot import mypkg"):
        FiDStudent.from_pretrained(tmp_path / "t5")


# ------------------------------------------------------------------------------------------------ builders, augmenters


def build_marker(spec: str, texts, out_dir) -> None:
    """A test model builder: a plain tiny T5 whose spec and text count are recorded beside it."""
    from radcot.demo.tiny import build_tiny_t5

    texts = list(texts)
    build_tiny_t5(texts, out_dir, **SIZE)
    (Path(out_dir) / "built_by.json").write_text(json.dumps({"spec": spec, "n_texts": len(texts)}))


class Recording:
    """A test augmenter: upper-cases each target and appends the seed it got to ``log``."""

    def __init__(self, targets, log: str):
        self.log = Path(log)
        self.n_targets = len(list(targets))

    def __call__(self, example, seed):
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"{seed}\t{example['query_id']}\n")
        return dict(example, target=str(example["target"]).upper())


def test_a_registered_builder_makes_the_initial_model_of_a_training_run(cranfield_distill, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from radcot.student.train import TrainConfig, train

    monkeypatch.setitem(hooks.MODEL_BUILDERS, "marker-t5", "test_student_hooks:build_marker")
    log = tmp_path / "augment.log"
    run = train(TrainConfig(data=str(cranfield_distill), model="marker-t5:any", out=str(tmp_path / "run"),
                            max_steps=2, batch_size=2, text_maxlength=32, target_maxlength=16, eval_every=0,
                            eval_max_new_tokens=4, eval_max_examples=2, save_every=2, seed=3,
                            augment="test_student_hooks:Recording", augment_args={"log": str(log)}),
                show_progress=False)
    built = json.loads((run / "init-model" / "built_by.json").read_text())
    assert built["spec"] == "marker-t5:any" and built["n_texts"] > 100
    # the augmenter saw every training example of both steps, seeded by seed, step, rank and position
    seeds = [line.split("\t")[0] for line in log.read_text().splitlines()]
    assert seeds == ["3-0-0-0", "3-0-0-1", "3-1-0-0", "3-1-0-1"]
