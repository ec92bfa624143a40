"""Engine: determinism, reference experiments, scenarios, accuracy weighting, failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clrepro.engine.experiment import run_experiment
from clrepro.engine.loop import Engine, TrainingDiverged, run
from clrepro.engine.references import needed_references, reference_config


def test_same_config_and_seed_give_bit_identical_matrix(tiny):
    a = run(tiny("hat_pmnist")).acc
    b = run(tiny("hat_pmnist")).acc
    c = run(tiny("hat_pmnist", "seed=2")).acc
    assert np.array_equal(a, b, equal_nan=True)
    assert not np.array_equal(a, c, equal_nan=True)


def test_matrix_is_lower_triangular(tiny):
    acc = run(tiny("finetuning_pmnist")).acc
    assert np.isnan(acc[np.triu_indices(3, 1)]).all()
    assert np.isfinite(acc[np.tril_indices(3)]).all()


def test_references_follow_metrics_and_use_plain_twin(tiny):
    cfg = tiny("hat_pmnist", "metrics=[AA,BWT,FWT,FR]")
    assert needed_references(cfg) == ["independent", "joint", "random"]
    ref = reference_config(cfg, "independent")
    assert ref.algorithm == {"name": "independent"} and ref.backbone["name"] == "mlp"
    assert ref.backbone["hidden"] == [64, 32]
    assert needed_references(tiny("hat_pmnist", "metrics=[AA,FR]", "fr_variant=independent")) == \
        ["independent", "random"]


def test_independent_restarts_every_task_from_the_same_weights(tiny):
    engine = Engine(tiny("finetuning_pmnist", "algorithm=independent"))
    starts = []

    class Capture:
        def on_task_start(self, task_id, **kw):
            starts.append(engine.algorithm.backbone.body.fc[0].weight.detach().clone())

    engine.fabric._callbacks.append(Capture())
    result = engine.run()
    assert all(torch.equal(s, starts[0]) for s in starts)
    # a task's accuracy never changes later: each task keeps its own network
    for t in range(3):
        assert np.all(result.acc[t:, t] == result.acc[t, t])


def test_random_never_trains(tiny):
    engine = Engine(tiny("finetuning_pmnist", "algorithm=random"))
    before = {n: p.detach().clone() for n, p in engine.algorithm.backbone.named_parameters()}
    result = engine.run()
    assert result.steps == 0
    for n, p in engine.algorithm.backbone.named_parameters():
        assert torch.equal(p, before[n])
    assert np.nanmean(result.acc) < 0.35  # chance is 0.1


def test_fix_trains_task_one_only(tiny):
    engine = Engine(tiny("finetuning_pmnist", "algorithm=fix"))
    result = engine.run()
    assert result.steps == 2 * (len(engine.benchmark.task(1).train) // 32)  # two epochs of task 1 only
    assert {h["task"] for h in result.history} == {1}
    assert np.all(result.acc[:, 0] == result.acc[0, 0])


def test_joint_trains_once_on_all_tasks_with_per_task_loss(tiny):
    result = Engine(tiny("finetuning_pmnist", "algorithm=joint")).run()
    assert result.acc.shape == (1, 3)
    assert {h["task"] for h in result.history} == {3}
    assert result.acc.min() > 0.8


def test_cil_and_dil_scenarios_run(tiny):
    cil = Engine(tiny("finetuning_pmnist", "benchmark=split_digits", "benchmark.num_tasks=3", "scenario=CIL"))
    r = cil.run()
    assert cil.algorithm.heads.label_offset(3) == 4
    assert r.acc[0, 0] > 0.9 and r.acc[-1, 0] < 0.5  # CIL forgets old classes under finetuning
    dil = run(tiny("finetuning_pmnist", "scenario=DIL"))
    assert np.isfinite(dil.acc[-1]).all()


def test_batch_mean_differs_from_sample_weighting_only_through_last_batch(tiny):
    batch = run(tiny("finetuning_pmnist", "trainer.eval_batch_size=100")).acc
    sample = run(tiny("finetuning_pmnist", "trainer.eval_batch_size=100", "trainer.acc_weighting=sample")).acc
    assert np.abs(batch - sample)[np.tril_indices(3)].max() < 0.02
    assert not np.array_equal(batch, sample, equal_nan=True)  # 360 test images: last batch holds 60
    even = run(tiny("finetuning_pmnist", "trainer.eval_batch_size=360")).acc  # one batch: identical
    assert np.array_equal(even, sample, equal_nan=True)


def test_nan_loss_raises_training_diverged(tiny):
    with pytest.raises(TrainingDiverged, match="task 1"):
        run(tiny("finetuning_pmnist", "optimizer.lr=1e30"))


def test_experiment_runs_references_and_reuses_given_ones(tiny, tmp_path):
    cfg = tiny("hat_pmnist", "metrics=[AA,BWT,FWT,FR]")
    first = run_experiment(cfg, tmp_path / "a")
    assert first.reference_sources == {"independent": "run", "joint": "run", "random": "run"}
    assert all(first.metrics[k] is not None for k in ("AA", "BWT", "FWT", "FR"))
    for f in ("acc.csv", "loss_cls.csv", "metrics.json", "config.yaml", "manifest.json", "acc_matrix.png",
              "task_curves.png", "refindependent/acc.csv", "refjoint/acc.csv", "refrandom/acc.csv"):
        assert (tmp_path / "a" / f).is_file(), f
    again = tiny("hat_pmnist", "metrics=[AA,BWT,FWT,FR]",
                 *[f"references.{k}={tmp_path / 'a' / f'ref{k}' / 'acc.csv'}" for k in ("independent", "joint", "random")])
    second = run_experiment(again, None)
    assert set(second.reference_sources.values()) != {"run"}
    for k in ("AA", "BWT", "FWT", "FR"):
        assert second.metrics[k] == pytest.approx(first.metrics[k], abs=1e-12)


def test_independent_tests_its_stored_batchnorm_copies_in_training_mode_as_the_reference(tiny, one_thread):
    """The reference's Independent keeps its copies where model.eval() does not reach: with BatchNorm each test batch
    is normalised by its own statistics. `stored_copies_train_mode=false` tests them on their running statistics."""
    def matrix(*overrides):
        return Engine(tiny("finetuning_pmnist", "algorithm=independent", "backbone.batch_norm=true",
                           "trainer.eval_batch_size=40", *overrides)).run().acc

    parity, fixed = matrix(), matrix("algorithm.stored_copies_train_mode=false")
    assert np.array_equal(np.isnan(parity), np.isnan(fixed))
    assert not np.allclose(parity[~np.isnan(parity)], fixed[~np.isnan(fixed)])
    engine = Engine(tiny("finetuning_pmnist", "algorithm=independent", "backbone.batch_norm=true",
                         "trainer.eval_batch_size=40"))
    engine.run()
    algo, task = engine.algorithm, engine.tests[2]
    copy2 = algo.task_backbones["2"]
    with torch.no_grad():
        expected = torch.cat([algo.heads(copy2.train()(c), 2) for c in task.x.split(40)])
        copy2.eval()
        algo.eval()
        got = algo(task.x, 2, "test")
    assert torch.allclose(got, expected, atol=1e-6)
    assert not copy2.training  # left in eval mode
    plain = [Engine(tiny("finetuning_pmnist", "algorithm=independent", *o)).run().acc
             for o in ((), ("algorithm.stored_copies_train_mode=false",))]
    assert np.array_equal(plain[0], plain[1], equal_nan=True)  # no BatchNorm: no effect


def test_plain_runtime_gives_fabrics_results_without_importing_lightning(tiny, one_thread, monkeypatch):
    """A full-precision CPU run uses the plain-torch runtime: the same accuracy matrix as through Fabric, bit for
    bit, and (in a fresh process) `lightning` is never imported."""
    import subprocess
    import sys

    from clrepro.engine import loop, runtime

    plain = run(tiny("hat_pmnist")).acc
    monkeypatch.setattr(loop, "make_runtime", lambda t, cbs=(): runtime._fabric(t, cbs))
    fabric = run(tiny("hat_pmnist")).acc
    assert np.array_equal(plain, fabric, equal_nan=True)
    code = ("import sys; from clrepro.config.load import load_experiment; from clrepro.engine.loop import run; "
            "run(load_experiment('hat_pmnist', ['benchmark=pdigits', 'benchmark.num_tasks=1', 'backbone.hidden=[8,8]',"
            " 'trainer.epochs=1', 'metrics=[AA]'])); print(any(m.split('.')[0] == 'lightning' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]


def test_runtime_refuses_cuda_without_a_gpu_in_one_line(tiny):
    import torch

    from clrepro.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="CUDA is not available"):
        Engine(tiny("hat_pmnist", "trainer.accelerator=cuda"))


def test_a_last_run_frees_the_cached_tasks_before_its_plots_and_a_sweep_run_keeps_them(tiny, tmp_path):
    """`clrepro run` is a process's last run: its tasks are freed before plotting (peak RSS stays at
    training's); runs inside sweep workers and tables keep them for the next seed."""
    from clrepro.data import benchmarks

    cfg = tiny("finetuning_pmnist")
    kept = run_experiment(cfg, tmp_path / "a")
    assert len(benchmarks._TASK_CACHE) > 0
    last = run_experiment(cfg, tmp_path / "b", last_run=True)
    assert len(benchmarks._TASK_CACHE) == 0
    assert (tmp_path / "b" / "acc_matrix.png").is_file()
    assert np.array_equal(kept.main.acc, last.main.acc, equal_nan=True)


def test_a_lone_run_caches_no_task_and_a_run_with_references_keeps_them_for_the_reference(tiny, tmp_path):
    """A last run that trains on its tasks once (no reference computed now) holds only the current task and the
    test splits: no cached train split adds to its peak RSS. With a reference to run, the tasks stay cached."""
    from clrepro.data import benchmarks
    from clrepro.engine.listeners import Listener

    class CacheSize(Listener):
        def __init__(self):
            self.sizes = []

        def on_task_end(self, **kw):
            self.sizes.append(len(benchmarks._TASK_CACHE))

    cfg = tiny("finetuning_pmnist")
    benchmarks.release_task_cache()
    lone, seen = CacheSize(), CacheSize()
    single = run_experiment(cfg, None, [lone], last_run=True)
    cached = run_experiment(cfg, None, [seen])
    assert lone.sizes == [0, 0, 0] and seen.sizes == [1, 2, 3]
    assert np.array_equal(single.main.acc, cached.main.acc, equal_nan=True)
    benchmarks.release_task_cache()
    with_ref = CacheSize()
    run_experiment(tiny("finetuning_pmnist", "metrics=[AA,FWT]"), None, [with_ref], last_run=True)
    assert with_ref.sizes[:3] == [1, 2, 3]  # the independent reference trains on the same tasks next
