"""`run(config, seed)`: the task loop (a fresh optimizer per task, test after each task), giving the accuracy matrix."""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from clrepro.algorithms.base import Batch, CLAlgorithm, Step
from clrepro.backbones.heads import Heads
from clrepro.config.load import components
from clrepro.config.schema import ExperimentConfig
from clrepro.data.augment import for_benchmark
from clrepro.data.task import Split, Task
from clrepro.engine.result import RunResult
from clrepro.engine.memory import check_memory
from clrepro.engine.runtime import make_runtime, seed_everything
from clrepro.engine.unlearning import UnlearningPlan


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (a failed trial, not a user error)."""


EVAL_CHUNK = 4096  # samples per inference forward; accuracy batches are formed afterwards


def build_optimizer(cfg: ExperimentConfig, params) -> torch.optim.Optimizer:
    """A fresh optimizer for one task (the reference re-creates Adam at every task)."""
    o = cfg.optimizer
    params = [p for p in params if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


class Engine:
    """Builds the benchmark, backbone, heads and algorithm of a config, then runs the task loop."""

    def __init__(self, cfg: ExperimentConfig, seed: int | None = None, listeners: Iterable = (),
                 train_tasks: Iterable[int] | None = None, unlearning: bool = True) -> None:
        """`train_tasks` restricts training to some tasks with their original ids (the retrain reference);
        `unlearning=False` ignores the config's unlearning requests (the original reference)."""
        self.cfg = cfg
        self.seed = cfg.seed if seed is None else seed
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        self.fabric = make_runtime(cfg.trainer, listeners)  # plain torch, or Fabric for mixed precision
        self.device = self.fabric.device
        seed_everything(self.seed, cfg.trainer.deterministic)
        comp = components(cfg)
        self.benchmark = comp.benchmark_cls(comp.benchmark_cfg)
        self.benchmark.check_data()  # a missing or corrupt data file: one line, before training
        self.augment = for_benchmark(self.benchmark, self.seed)  # train-time augmentation; None when off
        self.num_tasks = self.benchmark.num_tasks
        check_memory(comp, self.benchmark.input_shape(), self.device)  # before anything is allocated
        backbone = comp.backbone_cls(self.benchmark.input_shape(), comp.backbone_cfg)
        heads = Heads(cfg.scenario, backbone.output_dim)
        self.algorithm: CLAlgorithm = comp.algorithm_cls(backbone, heads, comp.algorithm_cfg, self.num_tasks)
        self.algorithm.to(self.device)
        self.algorithm.optimizer_cfg = cfg.optimizer  # what an algorithm's own inner loop (repair) should use
        self.algorithm.eval_batch_size = cfg.trainer.eval_batch_size or cfg.trainer.batch_size  # the test batches
        if self.augment is not None:  # replay buffers augment what they hand out
            self.algorithm.set_augmentation(self.augment)
        self.train_tasks = list(range(1, self.num_tasks + 1) if train_tasks is None else train_tasks)
        self.plan = UnlearningPlan.from_config(cfg.unlearning, self.num_tasks) if unlearning else None
        if self.plan is not None and not self.plan.active:
            self.plan = None
        if self.plan is not None:
            self.algorithm.enable_unlearning()
        self.unlearned: list[int] = []
        self.trained: list[int] = []
        self.tests: dict[int, Split] = {}
        self.global_step = 0
        self.history: list[dict] = []

    # ----- helpers -----------------------------------------------------------------------------------
    def _task(self, t: int) -> Task:
        task = self.benchmark.task(t).to(self.device)
        if self.augment is not None:
            self.augment.add_task(task)
        self.tests[t] = task.test
        return task

    def _targets(self, y: torch.Tensor, task_id: int) -> torch.Tensor:
        off = self.algorithm.heads.label_offset(task_id)
        return y + off if off else y

    def _num_batches(self, n: int) -> int:
        return max(1, n // self.cfg.trainer.batch_size)  # drop_last, as the reference's train loader

    # ----- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def _logits(self, x: torch.Tensor, task_id: int, stage: str) -> torch.Tensor:
        chunk = max(1, EVAL_CHUNK // self.algorithm.eval_batch_size) * self.algorithm.eval_batch_size  # whole batches
        with self.fabric.autocast():
            return torch.cat([self.algorithm(x[i:i + chunk], task_id, stage)
                              for i in range(0, len(x), chunk)]).float()

    @torch.no_grad()
    def evaluate(self, task_ids: Iterable[int]) -> tuple[list[float], list[float]]:
        """Test accuracy and loss on each task: batch-mean (reference parity; docs/metrics) or sample-weighted."""
        self.algorithm.eval()
        bs = self.cfg.trainer.eval_batch_size or self.cfg.trainer.batch_size
        accs, losses = [], []
        for t in task_ids:
            split = self.tests[t]
            y = self._targets(split.y, t)
            logits = self._logits(split.x, t, "test")
            correct = (logits.argmax(1) == y).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            if self.cfg.trainer.acc_weighting == "batch_mean":
                accs.append(float(torch.stack([c.mean() for c in correct.split(bs)]).mean()))
                losses.append(float(torch.stack([c.mean() for c in loss.split(bs)]).mean()))
            else:
                accs.append(float(correct.mean()))
                losses.append(float(loss.mean()))
        return accs, losses

    @torch.no_grad()
    def _validate(self, tasks: list[Task]) -> tuple[float, float]:
        self.algorithm.eval()
        losses, accs = [], []
        for task in tasks:
            if len(task.val) == 0:
                continue
            y = self._targets(task.val.y, task.id)
            logits = self._logits(task.val.x, task.id, "val")
            losses.append(F.cross_entropy(logits, y))
            accs.append((logits.argmax(1) == y).float().mean())
        if not losses:
            return float("nan"), float("nan")
        return float(torch.stack(losses).mean()), float(torch.stack(accs).mean())

    # ----- training ---------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, y: torch.Tensor, task_id: int | torch.Tensor, step_task: int,
            val_tasks: list[Task]) -> None:
        """Train on (x, y) through the algorithm's phases (one by default), each with a fresh optimizer."""
        iters = self.cfg.trainer.iterations
        total = self._epochs(len(y))
        for phase, epochs in self.algorithm.phases(step_task, total):
            self.algorithm.start_phase(phase)
            cap = None if iters is None else round(iters * epochs / total)  # a phase's share of the step budget
            self._fit_phase(x, y, task_id, step_task, val_tasks, epochs, phase, cap)

    def _epochs(self, n: int) -> int:
        """Epochs per task: `trainer.epochs`, or enough epochs for `trainer.iterations` steps."""
        iters = self.cfg.trainer.iterations
        return self.cfg.trainer.epochs if iters is None else -(-iters // self._num_batches(n))

    def _fit_phase(self, x, y, task_id, step_task: int, val_tasks: list[Task], epochs: int, phase: str,
                   max_steps: int | None = None) -> None:
        algo, fabric, tcfg = self.algorithm, self.fabric, self.cfg.trainer
        optimizer = fabric.setup_optimizers(build_optimizer(self.cfg, algo.trainable_parameters()))
        live = self.cfg.scheduler.name != "none" and (algo.lr_scheduler_live or self.cfg.scheduler.apply == "all")
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            getattr(optimizer, "optimizer", optimizer), factor=self.cfg.scheduler.factor, patience=self.cfg.scheduler.patience) if live else None
        n, bs = len(y), tcfg.batch_size
        num_batches = self._num_batches(n)
        steps = 0
        for epoch in range(epochs):
            algo.train()
            order = torch.randperm(n).to(self.device)  # CPU generator: same order on every device
            loss_sum = torch.zeros((), device=self.device)
            todo = num_batches if max_steps is None else min(num_batches, max_steps - steps)
            if todo <= 0:
                break
            for b in range(todo):
                idx = order[b * bs:(b + 1) * bs]
                tid = task_id if isinstance(task_id, int) else task_id[idx]
                step = Step(step_task, epoch, b, num_batches, self.global_step)
                optimizer.zero_grad(set_to_none=True)
                xb = x[idx]
                batch = Batch(xb, y[idx], tid) if self.augment is None else Batch(self.augment(xb, tid), y[idx], tid, xb)
                with fabric.autocast():
                    loss = algo.training_loss(batch, step)
                fabric.backward(loss)
                algo.after_backward(step)
                optimizer.step()
                algo.after_optimizer_step(step)
                loss_sum += loss.detach()
                self.global_step += 1
            steps += todo
            train_loss = float(loss_sum) / todo  # one sync per epoch
            if not np.isfinite(train_loss):
                raise TrainingDiverged(f"training loss is {train_loss} in task {step_task}, epoch {epoch + 1}")
            val_loss, val_acc = self._validate(val_tasks)
            if scheduler is not None and np.isfinite(val_loss):
                scheduler.step(val_loss)
            logs = {"task": step_task, "phase": phase, "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                    "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"]}
            self.history.append(logs)
            fabric.call("on_epoch_end", task_id=step_task, epoch=epoch + 1, logs=logs)

    # ----- unlearning and the final state (docs/unlearning.md) -----------------------------------------------------
    def _unlearn(self, t: int, task_ids: list[int]) -> None:
        """Steps 6–7 of the unlearning protocol (docs/unlearning.md): the algorithm forgets `task_ids`, which join the unlearned set U."""
        t0 = time.perf_counter()
        self.algorithm.unlearn(list(task_ids))
        self.unlearned.extend(task_ids)
        self.algorithm.unlearned_ids = list(self.unlearned)
        logs = {"task": t, "phase": "unlearn", "unlearned": list(task_ids),
                "seconds": round(time.perf_counter() - t0, 4)}
        self.history.append(logs)
        self.fabric.call("on_unlearn", task_id=t, unlearned=list(task_ids), logs=logs)

    @torch.no_grad()
    def final_outputs(self, task_ids: Iterable[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per test task: the aggregated backbone features φ(x) and per-sample correctness of head t (CPU;
        None for a task this run never trained, which has no head: the retrain reference)."""
        self.algorithm.eval()
        out = {}
        for t in task_ids:
            if t not in self.tests:
                self._task(t)
            split = self.tests[t]
            with self.fabric.autocast():
                phi = torch.cat([self.algorithm.features(split.x[i:i + EVAL_CHUNK])
                                 for i in range(0, len(split.x), EVAL_CHUNK)]).float()
            correct = None
            if t in self.trained or self.algorithm.multitask:
                correct = (self._logits(split.x, t, "test").argmax(1) == self._targets(split.y, t)).cpu()
            out[t] = (phi.cpu(), correct)
        return out

    # ----- the task loop ----------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Fit each task, then test on every task seen so far: row N of the accuracy matrix."""
        try:
            return self._run()
        except BaseException as e:
            self.fabric.call("on_run_failed", error=e)
            raise

    def _run(self) -> RunResult:
        start = time.perf_counter()
        algo, T = self.algorithm, self.num_tasks
        self.fabric.call("on_run_start", name=self.cfg.name, num_tasks=T, seed=self.seed,
                         algorithm=type(algo).registry_name)
        acc = np.full((1 if algo.multitask else T, T), np.nan)
        loss = np.full_like(acc, np.nan)
        extras, train_s, eval_s = [], 0.0, 0.0
        self._partial = (acc, loss, extras, start)  # filled in place: what a failed run keeps
        if algo.multitask:
            tasks = [self._task(t) for t in range(1, T + 1)]
            x = torch.cat([t.train.x for t in tasks])
            ys = [self._targets(t.train.y, t.id) for t in tasks]
            tids = torch.cat([torch.full_like(t.train.y, t.id) for t in tasks])
            for task in tasks:
                algo.setup_task(task, self._num_batches(len(x)))
            algo.to(self.device)
            self.fabric.call("on_task_start", task_id=T, num_tasks=T, num_batches=self._num_batches(len(x)),
                             epochs=self.cfg.trainer.epochs)
            t0 = time.perf_counter()
            self.fit(x, torch.cat(ys), tids, T, tasks)
            for task in tasks:
                algo.end_task(task)
            train_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            row, lrow = self.evaluate(range(1, T + 1))
            eval_s += time.perf_counter() - t0
            acc[0], loss[0] = row, lrow
            extras.append(algo.extra_metrics())
            self.fabric.call("on_task_end", task_id=T, accuracies=row, loss=lrow, extras=extras[-1],
                             seconds=train_s + eval_s)
        else:
            for t in range(1, T + 1):
                if t not in self.train_tasks:
                    extras.append({})
                    continue
                task = self._task(t)
                self.trained.append(t)
                nb = self._num_batches(len(task.train))
                if self.plan is not None:  # what is still unlearnable at t, and what is gone
                    algo.unlearnable_ids = self.plan.unlearnable(t, self.unlearned)
                    algo.unlearned_ids = list(self.unlearned)
                algo.setup_task(task, nb)
                algo.to(self.device)
                self.fabric.call("on_task_start", task_id=t, num_tasks=T, num_batches=nb,
                                 epochs=self._epochs(len(task.train)) if algo.should_train(t) else 0)
                t0 = time.perf_counter()
                if algo.update_records is not None:
                    algo.update_records.start(t)
                if algo.should_train(t):
                    self.fit(task.train.x, self._targets(task.train.y, t), t, t, [task])
                if algo.update_records is not None:
                    algo.update_records.end(t)
                algo.end_task(task)
                if self.plan is not None and t in self.plan.requests:
                    self._unlearn(t, self.plan.requests[t])
                t1 = time.perf_counter()
                # Row t: every task tested so far (unlearned ones included); the retrain reference
                # tests only the tasks it trained.
                cols = list(range(1, t + 1)) if len(self.train_tasks) == T else list(self.trained)
                row, lrow = self.evaluate(cols)
                t2 = time.perf_counter()
                train_s, eval_s = train_s + t1 - t0, eval_s + t2 - t1
                acc[t - 1, [c - 1 for c in cols]], loss[t - 1, [c - 1 for c in cols]] = row, lrow
                extras.append(algo.extra_metrics())
                self.fabric.call("on_task_end", task_id=t, accuracies=row, loss=lrow, extras=extras[-1],
                                 seconds=t2 - t0)
        result = RunResult(acc, loss, algo.multitask, extras, self.history, train_s, eval_s,
                           time.perf_counter() - start, self.global_step, str(self.device))
        self.fabric.call("on_run_end", result=result)
        return result


    def partial_result(self) -> RunResult | None:
        """The matrices, extras and history so far of a run that did not finish (None if it never started)."""
        if getattr(self, "_partial", None) is None:
            return None
        acc, loss, extras, start = self._partial
        return RunResult(acc.copy(), loss.copy(), self.algorithm.multitask, list(extras), list(self.history), 0.0, 0.0,
                         time.perf_counter() - start, self.global_step, str(self.device))


def run(cfg: ExperimentConfig, seed: int | None = None, listeners: Iterable = ()) -> RunResult:
    """Run one experiment (one seed) and return its accuracy matrix: the one way any experiment runs."""
    return Engine(cfg, seed, listeners).run()
