"""``radcot train``: train a FiD student (resumable; DDP when launched with torchrun)."""
from __future__ import annotations

import dataclasses
import os

from radcot.cli._args import ArgumentParser, non_negative_float, non_negative_int, positive_float, positive_int
from radcot.cli._removed import add_removed
from radcot.selection import SELECT_FORMULAS


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="radcot train",
        description="Train a Fusion-in-Decoder student on distillation data (radcot build-data). "
                    "Under `torchrun --nproc_per_node=N -m radcot train ...` it trains with DDP.")
    p.add_argument("--data", help="distillation data directory (radcot build-data)")
    p.add_argument("--model", help="google/flan-t5-base (or another T5 name/dir), or the demo's offline "
                                   "tiny-t5[:d_model=128,layers=2,heads=4,d_ff=512,vocab_size=4000]")
    p.add_argument("--preset", choices=_preset_names(), default=None,
                   help="start from a named student's settings (model, TrainConfig fields); flags override them. "
                        "demo: the demo's tiny pointer T5 as pipelines/demo.yaml trains it (a demo architecture, "
                        "not the paper's flan-t5; docs/demo.md)")
    p.add_argument("--out", help="run directory (RUN_DIR/best is the selected model)")
    p.add_argument("--config", help="JSON/YAML file of TrainConfig fields; flags override it")
    p.add_argument("--resume", action="store_true", help="continue from the last intact checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the training run in --out (only a radcot training run; other files stay)")
    p.add_argument("--steps", "--max-steps", dest="max_steps", type=positive_int, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=positive_int, help="examples per micro-batch per process (default 4)")
    p.add_argument("--grad-accum", type=positive_int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=positive_float, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=non_negative_float, help="AdamW weight decay (default 0.1)")
    p.add_argument("--weight-decay-exclude", nargs="*", metavar="SUBSTRING",
                   help="parameter-name substrings exempt from weight decay (default: layer_norm .bias); the flag "
                        "alone decays every parameter, as the official RADCoT/FiD code")
    p.add_argument("--clip", type=non_negative_float, help="gradient-norm clipping (default 1.0; 0 = off)")
    p.add_argument("--scheduler", choices=["constant", "linear"], help="LR schedule after warm-up (default constant)")
    p.add_argument("--warmup-steps", type=non_negative_int, help="linear warm-up steps (default 0)")
    p.add_argument("--n-context", type=positive_int, help="passages per query (default: the data's k)")
    p.add_argument("--text-maxlength", type=positive_int, help="tokens per (query, passage) input (default 300)")
    p.add_argument("--target-maxlength", type=positive_int, help="tokens of the target CoT (default 256)")
    p.add_argument("--template", help="per-passage input: a name (official, passage-prefix: radcot <= 0.2's) or a "
                                      "template with {query} and {passage} (default: official, the paper's "
                                      "'Answer the following question \"{query}\" based on the given passage. "
                                      "{passage} Give the rationale before answering :'; see docs/student.md)")
    p.add_argument("--eval-every", type=non_negative_int, help="evaluate on dev every N steps (default 100; 0 = at the end)")
    p.add_argument("--eval-max-new-tokens", type=positive_int, help="tokens generated per dev example (default 150)")
    p.add_argument("--eval-max-examples", type=positive_int, help="dev examples per evaluation (default 200)")
    p.add_argument("--metric-for-best", choices=["rougeL", "dev_loss"], help="best-checkpoint metric (default rougeL)")
    p.add_argument("--save-every", type=positive_int, help="checkpoint every N steps (default 100)")
    p.add_argument("--keep-checkpoints", type=positive_int, help="recent checkpoints kept (default 2)")
    p.add_argument("--log-every", type=positive_int, help="log the loss every N steps (default 10)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="autocast (default auto: bf16 on GPU)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--seed", type=non_negative_int, help="seed (default 0)")
    p.add_argument("--log-examples", action="store_true", default=None,
                   help="write each step's query ids to RUN_DIR/examples.rank{R}.tsv")
    p.add_argument("--select-by", choices=["rougeL", "loss", "retrieval"],
                   help="choose RUN_DIR/best by dev ROUGE-L (default), dev loss, or retrieval quality of the "
                        "expanded dev queries (needs --select-index and --select-qrels)")
    p.add_argument("--select-metric", help="ir-measures metric for --select-by retrieval (default nDCG@10)")
    p.add_argument("--select-index", help="BM25 index directory for --select-by retrieval")
    p.add_argument("--select-qrels", help="qrels of the training queries (file, or BEIR dir: qrels/train.tsv)")
    p.add_argument("--select-formula", choices=SELECT_FORMULAS,
                   help="expansion formula for --select-by retrieval (default radcot)")
    p.add_argument("--select-k", type=positive_int, help="BM25 depth for --select-by retrieval (default 100)")
    p.add_argument("--augment", help="training-example augmenter: a registered name (copy: the demo's copy "
                                     "augmentation) or module:factory (default: none)")
    p.add_argument("--augment-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="an argument of the augmenter (repeatable; copy: p=0.5, max_df=0.05)")
    for old, new in (("--copy-augment", "--augment copy --augment-arg p=P"),
                     ("--copy-augment-max-df", "--augment copy --augment-arg max_df=D")):
        add_removed(p, old, f"copy augmentation is now a training augmenter: {new} (or --preset demo)")
    p.add_argument("--nproc-per-node", type=positive_int,
                   help="training processes; > 1 launches torchrun with that many (default 1)")
    p.add_argument("--stop-after", type=positive_int, help="end after this step as if interrupted (resume later with --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --out, --overwrite replaces it: pass one of them")

    from radcot.student.launch import launch_training
    from radcot.student.train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.augment_arg:
        given["augment_args"] = _key_values(p, args.augment_arg)
    if args.config:
        if args.preset:
            p.error("--preset and --config both give the TrainConfig fields: use one of them (flags override either)")
        config = TrainConfig.from_file(args.config, **given)
    else:
        config = _config_from_flags(p, given, args.preset)
    show = False if args.no_progress else None
    scorer = _scorer(config)
    with _run_dir_lock(config.out, args.resume, args.overwrite):
        if args.stop_after is not None:
            run_dir = train(config, resume=args.resume, overwrite=args.overwrite, show_progress=show,
                            stop_after=args.stop_after, scorer=scorer)
        else:
            run_dir = launch_training(config, resume=args.resume, overwrite=args.overwrite, show_progress=show,
                                      scorer=scorer)
    if int(os.environ.get("RANK", "0")) == 0:
        print(run_dir / "best" if (run_dir / "best").is_dir() else run_dir)
    return 0


def _scorer(config):
    """The checkpoint scorer of ``select_by: retrieval`` (built by every process from the config: each torchrun
    rank runs this command; only rank 0, which evaluates, opens the index), else None."""
    if config.select_by != "retrieval":
        return None
    from radcot.selection import retrieval_scorer

    return retrieval_scorer(config)


def _preset_names() -> list[str]:
    from radcot.demo.preset import PRESETS

    return sorted(PRESETS)


def _key_values(p, items: list[str]) -> dict:
    """``["p=0.5", "name=x"]`` -> ``{"p": 0.5, "name": "x"}`` (values read as JSON when they parse, else text)."""
    import json

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            p.error(f"argument --augment-arg: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _config_from_flags(p, given: dict, preset: str | None):
    """The TrainConfig of the flags over the preset's fields; a missing or bad field is a usage error."""
    from radcot.student.train import TrainConfig

    fields = {}
    if preset:
        from radcot.demo.preset import get_preset

        fields = get_preset(preset).train_fields()
    fields.update(given)
    missing = [f"--{n}" for n in ("data", "model", "out") if n not in fields]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)} (or --config FILE)")
    try:
        return TrainConfig(**fields)
    except ValueError as e:
        hint = ""
        if preset and "select_index" in str(e):
            hint = (f"; --preset {preset} keeps the checkpoint whose CoTs retrieve best on the held-out training "
                    f"queries: pass --select-index BM25_INDEX --select-qrels QRELS (a BEIR directory: its "
                    f"qrels/train.tsv), or --select-by rougeL")
        p.error(f"{e}{hint}")


def _run_dir_lock(out, resume: bool, overwrite: bool = False):
    """Check ``--out`` (a run to ``--resume`` must exist; a directory radcot did not write is refused, even with
    ``--overwrite``) and lock it; under torchrun only rank 0 takes the lock, and processes it starts inherit it."""
    import contextlib
    from pathlib import Path

    from radcot.cli._args import OutputExistsError
    from radcot.locks import output_lock
    from radcot.records import RadcotError
    from radcot.student.train import CONFIG_FILE

    if int(os.environ.get("RANK", "0")) != 0:  # rank 0 checks and locks for all ranks
        return contextlib.nullcontext()
    run_dir = Path(out)
    if resume and not (run_dir / CONFIG_FILE).is_file():
        raise RadcotError(f"--resume: nothing to resume in {run_dir} (no {CONFIG_FILE}); drop --resume to start a "
                          f"new run there, or point --out at the run to continue")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / CONFIG_FILE).is_file():
        raise OutputExistsError(f"training run directory {run_dir} holds files radcot did not write; radcot never "
                                f"replaces them{' (not even with --overwrite)' if overwrite else ''}: choose another "
                                f"--out")
    return output_lock(run_dir, "training run", inherit=True)
