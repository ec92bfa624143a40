"""CLPU-DER++: temporary networks, merge on expiry (CLPU1), unlearning, age-0 tasks, the reference's leaks (CLPU2/3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clrepro.algorithms.base import Batch
from clrepro.algorithms.buffer import Replay
from clrepro.algorithms.clpu_derpp import CLPUDERpp
from clrepro.backbones.heads import Heads
from clrepro.backbones.mlp import MLP, MLPConfig
from clrepro.config.hparams import build
from clrepro.config.load import load_experiment
from clrepro.data.task import Split, Task
from clrepro.engine.loop import Engine
from clrepro.errors import ConfigError

from conftest import TINY

CHANCE = 0.25  # 10 classes per task: an unlearned task's accuracy falls below this


pytestmark = pytest.mark.usefixtures("one_thread")


def config(*overrides: str):
    return load_experiment("finetuning_pmnist", [*TINY, "algorithm=clpu_derpp", *overrides])


def snap(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder:
    """A Fabric listener that snapshots the algorithm at the engine's hooks (task start, last epoch, unlearn, end)."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.at: dict[tuple[str, int], dict] = {}

    def _record(self, where: str, t: int) -> None:
        algo = self.engine.algorithm
        was = algo.training
        algo.eval()
        with torch.no_grad():
            logits = {k: algo(self.engine.tests[k].x, k, "test") for k in range(1, t + 1)}
        algo.train(was)
        held = algo.buffer.task_id[:len(algo.buffer)].tolist() if len(algo.buffer) else []
        self.at[where, t] = {"main": snap(algo.backbone), "heads": snap(algo.heads), "logits": logits,
                             "temporary": sorted(map(int, algo.temporary_backbones)), "buffer_tasks": set(held),
                             "merges": dict(algo.merges)}

    def on_task_start(self, task_id, **_):
        self._record("start", task_id)

    def on_epoch_end(self, task_id, **_):
        self._record("fit", task_id)  # the last epoch's overwrites: the state right before end_task and unlearn

    def on_unlearn(self, task_id, **_):
        self._record("unlearn", task_id)


def run(*overrides: str) -> tuple[Engine, Recorder, object]:
    rec = Recorder()
    engine = Engine(config(*overrides), listeners=[rec])
    rec.engine = engine
    return engine, rec, engine.run()


# ----- the life of a task: temporary network, unlearning, merge ------------------------------------------
@pytest.mark.parametrize("from_config", [False, True])
def test_temporary_networks_unlearning_and_merge_over_a_run(from_config):
    # Task 1 (age 2) is unlearned after task 2; task 2 (age 1) stops being unlearnable at task 3 and is merged
    # then; task 3 (age 1) is still temporary at the end.
    engine, rec, result = run("unlearning.requests={2:[1]}", "unlearning.unlearnable_age={1:2,2:1,3:1}",
                              "algorithm.merge_num_steps=7", f"algorithm.merge_steps_from_config={from_config}")
    algo, acc, at = engine.algorithm, result.acc, rec.at
    theta0 = at["start", 1]["main"]
    # Tasks 1 and 2 each train a temporary network; the main backbone stays θ_0 throughout.
    assert at["start", 1]["temporary"] == [1] and at["start", 2]["temporary"] == [1, 2]
    for t in (1, 2):
        assert same(at["fit", t]["main"], theta0)
    assert at["fit", 1]["buffer_tasks"] == {1} and at["fit", 2]["buffer_tasks"] == {1, 2}  # their samples go in
    assert acc[0, 0] > 0.6 and acc[1, 1] > 0.6
    # Unlearning task 1 drops its network and entries; the main model and task 2's outputs are bit-identical.
    before, after = at["fit", 2], at["unlearn", 2]
    assert after["temporary"] == [2] and after["buffer_tasks"] == {2}
    assert same(before["main"], after["main"]) and same(before["heads"], after["heads"])
    assert torch.equal(before["logits"][2], after["logits"][2])
    assert not torch.equal(before["logits"][1], after["logits"][1])  # task 1 now goes through the main backbone
    assert acc[1, 0] < CHANCE
    # Task 2 is merged when task 3 starts training (not at its setup), then its network is gone.
    assert at["start", 3]["temporary"] == [2, 3] and at["start", 3]["merges"] == {}
    nb = engine._num_batches(len(engine.benchmark.task(3).train))
    assert algo.merges == {2: 7 if from_config else engine.cfg.trainer.epochs * nb}
    assert at["fit", 3]["temporary"] == [3] and sorted(map(int, algo.temporary_backbones)) == [3]
    assert not same(at["fit", 3]["main"], theta0)  # the merge trained the main backbone
    assert acc[2, 1] > (CHANCE if from_config else 0.6)  # task 2 now answered by the main backbone (7 steps: less)
    assert acc[2, 2] > 0.6 and acc[2, 0] < CHANCE


def test_merge_loss_is_alpha_mse_plus_beta_ce():
    torch.manual_seed(0)
    backbone = MLP((4,), MLPConfig(hidden=[5]))
    cfg = build(CLPUDERpp.Config, {"distillation_reg_factor": 0.3, "replay_ce_factor": 0.7}, "algorithm")
    algo = CLPUDERpp(backbone, Heads("TIL", backbone.output_dim), cfg, num_tasks=2)
    empty = Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    for t in (1, 2):
        algo.setup_task(Task(t, 3, empty, empty, empty), 1)
    x, y, z = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(6, 3)
    tid = torch.tensor([1, 2, 1, 2, 2, 1])
    replay = Replay(x, y, z, tid, torch.arange(6))
    feats = algo.backbone(x)
    out = torch.stack([algo.heads(feats[i:i + 1], int(tid[i]))[0] for i in range(6)])  # per-sample heads
    expected = 0.3 * F.mse_loss(out, z) + 0.7 * F.cross_entropy(out, y)
    assert torch.allclose(algo.merge_loss(replay), expected, atol=1e-6)


# ----- age-0 tasks and the reference's leaks ---------------------------------------------------------------
@pytest.mark.parametrize("isolate", [False, True])
def test_age_0_task_trains_the_main_model_and_the_reference_replays_temporary_tasks_into_it(isolate):
    # Task 1 (age 2) is temporary and unlearned after task 2; tasks 2 and 3 (age 0) are never unlearnable.
    engine, rec, result = run("unlearning.requests={2:[1]}", "unlearning.unlearnable_age={1:2,2:0,3:0}",
                              f"algorithm.isolate_temporary_tasks={isolate}")
    at, acc = rec.at, result.acc
    assert at["start", 2]["temporary"] == [1] and at["start", 3]["temporary"] == []
    assert not same(at["fit", 2]["main"], at["start", 2]["main"])  # task 2 trained the main backbone directly
    assert engine.algorithm.merges == {}
    before, after = at["fit", 2], at["unlearn", 2]  # unlearning task 1 leaves the main model's task 2 bit-identical
    assert same(before["main"], after["main"]) and torch.equal(before["logits"][2], after["logits"][2])
    head1 = {k: v for k, v in at["start", 2]["heads"].items() if k.startswith("heads.1.")}
    head1_after = {k: v for k, v in at["fit", 2]["heads"].items() if k.startswith("heads.1.")}
    if isolate:  # CLPU2 fix: the main model never saw task 1, so unlearning it leaves chance
        assert same(head1, head1_after) and acc[1, 0] < CHANCE
    else:  # reference: task 2's DER++ replay drew task 1's entries into the main model and head 1
        assert not same(head1, head1_after) and acc[1, 0] > 0.5


@pytest.mark.parametrize("reset", [False, True])
def test_unlearned_head_keeps_its_weights_unless_reset(reset):
    _, rec, _ = run("unlearning.requests={2:[1]}", "unlearning.unlearnable_age=2",
                    f"algorithm.reset_unlearned_head={reset}")
    before, after = rec.at["fit", 2]["heads"], rec.at["unlearn", 2]["heads"]
    assert same({k: v for k, v in before.items() if k.startswith("heads.2.")},
                {k: v for k, v in after.items() if k.startswith("heads.2.")})
    head1 = [k for k in before if k.startswith("heads.1.")]
    assert all(torch.equal(before[k], after[k]) != reset for k in head1)


@pytest.mark.parametrize("mode", ["from_main", "from_scratch"])
def test_temporary_network_starts_from_the_main_backbone_or_theta0(mode):
    engine = Engine(config("unlearning.requests={2:[2]}", "unlearning.unlearnable_age={1:0,2:1,3:1}",
                           f"algorithm.temporary_backbone_init_mode={mode}"))
    algo, theta0 = engine.algorithm, snap(engine.algorithm.backbone)
    for t in (1, 2):
        task = engine._task(t)
        algo.unlearnable_ids = engine.plan.unlearnable(t, [])
        algo.setup_task(task, engine._num_batches(len(task.train)))
        if t == 1:
            engine.fit(task.train.x, task.train.y, 1, 1, [task])
            algo.end_task(task)
    assert list(algo.temporary_backbones) == ["2"] and not same(snap(algo.backbone), theta0)
    start = snap(algo.temporary_backbones["2"])
    assert same(start, snap(algo.backbone) if mode == "from_main" else theta0)
    expected = [*algo.temporary_backbones["2"].parameters(), *algo.heads.parameters()]
    assert [id(p) for p in algo.trainable_parameters()] == [id(p) for p in expected]  # not the main backbone


@pytest.mark.parametrize("isolate", [False, True])
def test_dil_temporary_task_trains_the_shared_head_unless_isolated(isolate):
    engine, rec, result = run("scenario=DIL", "unlearning.requests={2:[1]}", "unlearning.unlearnable_age=2",
                              f"algorithm.isolate_temporary_tasks={isolate}")
    shared_start, shared_fit = rec.at["start", 1]["heads"], rec.at["fit", 1]["heads"]
    assert same(shared_start, shared_fit) == isolate  # fix: task 1 trained its own copy of the shared head
    algo = engine.algorithm  # tasks 2 and 3 are still temporary at the end
    assert result.acc[0, 0] > 0.6 and list(algo.temporary_heads) == (["2", "3"] if isolate else [])


def test_cil_is_rejected_and_temporary_tasks_skip_replay():
    with pytest.raises(ConfigError, match="not supported"):
        config("scenario=CIL")
    engine = Engine(config("unlearning.requests={2:[1]}", "unlearning.unlearnable_age=2"))
    algo = engine.algorithm
    task = engine._task(1)
    algo.unlearnable_ids = [1]
    algo.setup_task(task, 1)
    calls = []  # DER++'s step always asks for a replay batch (None in task 1); Case II must not
    algo.replay_batch = lambda size: calls.append(size)
    x, y = task.train.x[:4], task.train.y[:4]
    loss = algo.training_loss(Batch(x, y, 1), None)
    assert calls == [] and torch.allclose(loss, F.cross_entropy(algo(x, 1, "train"), y))
