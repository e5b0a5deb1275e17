"""DDP: every collective on the rank's device, set_device before NCCL, device choice under torchrun, real gloo ranks.

The fast tests replace ``torch.distributed``'s collectives (and, to play a CUDA rank on a CPU machine, a few
``torch.cuda`` functions) with spies that record what the trainer's process-group wrapper asks for; the thing under
test is that wrapper (``radcot.student.train._Dist``), not torch. The slow tests run real gloo process groups.
"""
from __future__ import annotations

import json
import socket

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)

torch = pytest.importorskip("torch")

TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


class _Recorded(Exception):
    """Raised by the all_reduce spy after recording (a meta tensor has no value to read back)."""


@pytest.fixture
def calls(monkeypatch):
    """Spies for torch.distributed's process-group calls; each records ``(name, details)`` in order."""
    log: list[tuple] = []
    d = torch.distributed
    monkeypatch.setattr(d, "is_initialized", lambda: False)
    monkeypatch.setattr(d, "init_process_group", lambda **kw: log.append(("init_process_group", kw)))
    monkeypatch.setattr(d, "get_rank", lambda *a, **kw: 1)
    monkeypatch.setattr(d, "barrier", lambda *a, **kw: log.append(("barrier", kw)))
    monkeypatch.setattr(d, "destroy_process_group", lambda *a, **kw: log.append(("destroy_process_group", kw)))

    def all_reduce(tensor, *a, **kw):
        log.append(("all_reduce", tensor.device))
        raise _Recorded

    def broadcast_object_list(objects, src=None, group=None, device=None, **kw):
        log.append(("broadcast_object_list", device))

    def all_gather_object(out, obj, group=None):
        log.append(("all_gather_object", None))
        out[:] = [obj] * len(out)

    monkeypatch.setattr(d, "all_reduce", all_reduce)
    monkeypatch.setattr(d, "broadcast_object_list", broadcast_object_list)
    monkeypatch.setattr(d, "all_gather_object", all_gather_object)
    return log


@pytest.fixture
def two_cuda_gpus(monkeypatch, calls):
    """This CPU-only torch plays a machine with two GPUs: availability, count and set_device are spies."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    return calls


@pytest.mark.fast
def test_every_collective_runs_on_the_ranks_device(calls):
    """The loss mean all-reduces a tensor on the rank's device (the original code reduced a CPU tensor, which NCCL
    rejects at step 1), and the object broadcast names that device. ``meta`` stands in for a non-CPU device."""
    from radcot.student.train import _Dist

    meta = torch.device("meta")
    dist = _Dist(torch, meta, env=TORCHRUN_ENV)
    assert dist.enabled and dist.world == 2 and dist.rank == 1 and not dist.main
    with pytest.raises(_Recorded):
        dist.mean(1.5)
    dist.broadcast({"step": 3})
    assert dist.all_gather("rng") == ["rng", "rng"]
    dist.barrier()
    devices = {name: detail for name, detail in calls if name in ("all_reduce", "broadcast_object_list")}
    assert devices == {"all_reduce": meta, "broadcast_object_list": meta}
    assert calls[0][0] == "init_process_group" and calls[0][1]["backend"] == "gloo"  # not CUDA: gloo


@pytest.mark.fast
def test_a_cuda_rank_sets_its_device_before_any_nccl_call(two_cuda_gpus, monkeypatch):
    """Under torchrun on a GPU machine, rank LOCAL_RANK=1: set_device(cuda:1) comes first, then the NCCL group is
    created for that device, and barriers name it (the original code created the group first, with no device)."""
    from radcot.student.train import _Dist

    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    dist = _Dist(torch)  # the device is chosen as train() chooses it: auto
    dist.barrier()
    dist.all_gather("rng")  # NCCL object collectives use the current device: set above
    cuda1 = torch.device("cuda", 1)
    names = [name for name, _ in two_cuda_gpus]
    assert names[:2] == ["set_device", "init_process_group"], two_cuda_gpus
    assert two_cuda_gpus[0][1] == cuda1
    init = two_cuda_gpus[1][1]
    assert init["backend"] == "nccl" and init["device_id"] == cuda1
    assert ("barrier", {"device_ids": [1]}) in two_cuda_gpus
    assert dist.device == cuda1


@pytest.mark.fast
def test_device_choice_under_torchrun(two_cuda_gpus):
    """auto/cuda give rank r cuda:LOCAL_RANK; one index for every rank, more ranks than GPUs, or CUDA asked on a
    machine without it are one-line errors saying what to do."""
    from radcot.student.train import TrainingError, _pick_device

    assert _pick_device(torch, "auto", TORCHRUN_ENV)[0] == torch.device("cuda", 1)
    assert _pick_device(torch, "cuda", TORCHRUN_ENV)[0] == torch.device("cuda", 1)
    assert _pick_device(torch, "cpu", TORCHRUN_ENV)[0] == torch.device("cpu")
    with pytest.raises(TrainingError, match="every torchrun rank on one GPU"):
        _pick_device(torch, "cuda:0", TORCHRUN_ENV)
    with pytest.raises(TrainingError, match="--nproc_per_node 2"):
        _pick_device(torch, "auto", {**TORCHRUN_ENV, "WORLD_SIZE": "3", "LOCAL_RANK": "2"})


@pytest.mark.fast
def test_cuda_asked_without_a_gpu_is_an_error():
    from radcot.student.train import TrainingError, _pick_device

    if torch.cuda.is_available():
        pytest.skip("this torch sees a GPU")
    with pytest.raises(TrainingError, match="sees no CUDA GPU; use --device cpu"):
        _pick_device(torch, "cuda", {})
    assert _pick_device(torch, "auto", {})[0] == torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trainer_collectives_in_a_real_gloo_group_are_on_the_model_device(cranfield_distill, tiny_t5, tmp_path,
                                                                           monkeypatch):
    """A one-rank torchrun environment in this process: train() forms a real gloo group, and every tensor any
    collective it issues (loss mean, barriers, RNG gather, best broadcast) receives is on the device the model
    trains on; DDP wraps the model (world size 1 in the checkpoint)."""
    from radcot.student.train import TrainConfig, train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    seen: list[tuple[str, str]] = []
    d = torch.distributed
    for name in ("all_reduce", "barrier", "broadcast_object_list", "all_gather_object", "broadcast"):
        real = getattr(d, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            seen.extend((_name, str(t.device)) for t in tensors)
            seen.append((_name, "call"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(d, name, spy)
    run = train(TrainConfig(data=str(cranfield_distill), model=str(tiny_t5), out=str(tmp_path / "run"), max_steps=2,
                            batch_size=2, text_maxlength=32, target_maxlength=16, eval_every=2, eval_max_examples=2,
                            eval_max_new_tokens=4, save_every=2, device="cpu"), show_progress=False)
    assert not d.is_initialized()  # the group train() formed is gone
    device = json.loads((run / "device.json").read_text())["device"]
    called = {name for name, what in seen if what == "call"}
    assert {"all_reduce", "barrier", "broadcast_object_list", "all_gather_object"} <= called
    assert all(what == device for _, what in seen if what != "call")
    assert json.loads((run / "checkpoints" / "step-2" / "trainer_state.json").read_text())["world_size"] == 1


@pytest.mark.slow
def test_two_gloo_ranks_under_torchrun_use_every_example(cranfield_distill, tiny_t5, tmp_path, monkeypatch):
    """launch_training with nproc_per_node=2 runs `torchrun -m radcot train` (2 gloo ranks): one epoch covers every
    train example, the ranks see disjoint halves (DistributedSampler without drop_last pads by wrapping: at most
    world-1 repeats), the checkpoint records both ranks; a launch that fails raises with the ranks' error."""
    from radcot.student.data import load_distillation_data
    from radcot.student.launch import launch_training
    from radcot.student.train import TrainConfig, TrainingError, read_metrics

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dd, _ = load_distillation_data(cranfield_distill)
    train_ids = list(dd["train"]["query_id"])
    per_rank = -(-len(train_ids) // 2)
    bs = 16
    steps = -(-per_rank // bs)  # exactly one epoch
    cfg = TrainConfig(data=str(cranfield_distill), model=str(tiny_t5), out=str(tmp_path / "ddp"), max_steps=steps,
                      batch_size=bs, text_maxlength=48, target_maxlength=32, eval_every=0, eval_max_examples=4,
                      eval_max_new_tokens=8, save_every=100, log_every=1, lr=1e-3, log_examples=True, nproc_per_node=2)
    out = launch_training(cfg, show_progress=False)
    seen = {}
    for r in (0, 1):
        seen[r] = [ln.split("\t")[1] for ln in (out / f"examples.rank{r}.tsv").read_text().splitlines()]
        assert len(seen[r]) == per_rank
    assert set(seen[0]) | set(seen[1]) == set(train_ids)
    assert len(seen[0]) + len(seen[1]) - len(train_ids) <= 1
    assert len(set(seen[0]) & set(seen[1])) <= 1
    rows = read_metrics(out, "train")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert rows[-1]["examples"] == 2 * per_rank
    state = json.loads((out / "checkpoints" / f"step-{steps}" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert (out / "best" / "model.safetensors").is_file()
    bad = TrainConfig(data=str(tmp_path / "no-such-data"), model=str(tiny_t5), out=str(tmp_path / "bad"), max_steps=2,
                      nproc_per_node=2)
    with pytest.raises(TrainingError, match=r"(?s)2 processes\) failed.*no-such-data"):
        launch_training(bad, show_progress=False)
