"""A full experiment: the main run, the reference runs its metrics need, the metrics, and the run folder."""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from clrepro.config.load import config_hash, resolved_dict
from clrepro.config.schema import CUL_METRICS, ExperimentConfig
from clrepro.data.benchmarks import release_task_cache, single_pass
from clrepro.engine.loop import Engine, run
from clrepro.engine.references import cul_reference_config, needed_cul_references, needed_references, reference_config
from clrepro.engine.unlearning import UnlearningPlan
from clrepro.engine.result import RunResult
from clrepro.errors import UserError
from clrepro.metrics.cl import compute_cl_metrics
from clrepro.metrics.io import read_acc_matrix, read_joint_row, write_acc_csv, write_joint_csv


@dataclass
class ExperimentResult:
    """The main run, the reference matrices used, the metrics and where they were written."""

    main: RunResult
    references: dict[str, np.ndarray] = field(default_factory=dict)
    reference_sources: dict[str, str] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    config_hash: str = ""
    out_dir: Path | None = None
    wall_seconds: float = 0.0
    engine_seconds: float = 0.0  # training + evaluation of the main and the reference runs computed here


class RunFailed(UserError):
    """A run that failed (or was interrupted) after training started; what it produced is kept in `kept_in`
    with a manifest whose status says so. Exit code 1: the input was valid, the run was not."""

    exit_code = 1

    def __init__(self, stage: str, error: BaseException, kept_in: Path | None, kept: list[str]) -> None:
        self.stage, self.error, self.kept_in, self.kept = stage, error, kept_in, kept
        first = (str(error).strip().splitlines() or [""])[0][:300]
        super().__init__(f"{stage} failed: {type(error).__name__}" + (f": {first}" if first else ""))

    def where(self) -> str:
        if self.kept_in is None:
            return "nothing was written"
        return f"partial outputs kept in {self.kept_in}: {', '.join(self.kept)}"


class ReferenceCache:
    """Reference matrices on disk keyed by (kind, reference config hash, seed): a reference run is
    deterministic, so sweep trials that share it (same benchmark, backbone, optimizer) compute it once."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, kind: str, chash: str, seed: int) -> Path:
        return self.folder / f"{kind}-{chash}-seed{seed}.csv"

    def get(self, kind: str, chash: str, seed: int) -> np.ndarray | None:
        p = self._path(kind, chash, seed)
        if not p.is_file():
            return None
        return read_joint_row(p) if kind == "joint" else read_acc_matrix(p)

    def put(self, kind: str, chash: str, seed: int, mat: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        p = self._path(kind, chash, seed)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        (write_joint_csv if kind == "joint" else write_acc_csv)(tmp, mat)
        os.replace(tmp, p)  # atomic: concurrent trials never read half a file


def _reference(cfg: ExperimentConfig, kind: str, seed: int, listeners,
               cache: ReferenceCache | None) -> tuple[np.ndarray, str, float]:
    """A reference matrix and its source: the configured path, the cache, or a run now with the same seed."""
    setting = getattr(cfg.references, kind)
    if setting not in ("auto", "off"):
        return (read_joint_row(setting) if kind == "joint" else read_acc_matrix(setting)), setting, 0.0
    ref_cfg = reference_config(cfg, kind)
    chash = config_hash(resolved_dict(ref_cfg))
    if cache is not None and (hit := cache.get(kind, chash, seed)) is not None:
        return hit, "cache", 0.0
    result = run(ref_cfg, seed, listeners)
    mat = result.acc[0] if kind == "joint" else result.acc
    if cache is not None:
        cache.put(kind, chash, seed, mat)
    return mat, "run", result.train_seconds + result.eval_seconds


def _cul(cfg: ExperimentConfig, engine: Engine, acc: np.ndarray, seed: int, listeners) -> tuple[dict, dict, float]:
    """DD against the retrain reference, AG/AGR against the original one, AA_all/AA_remaining."""
    from clrepro.metrics.cul import accuracy_gain, cul_metrics, distribution_distance

    u = cfg.unlearning
    tasks = list(range(1, engine.num_tasks + 1))
    bs = cfg.trainer.eval_batch_size or cfg.trainer.batch_size
    main_out = engine.final_outputs(tasks)
    plan = engine.plan or UnlearningPlan.from_config(u, engine.num_tasks)
    refs, seconds, ag = {}, 0.0, None
    dd = {t: float("nan") for t in tasks}  # undefined (None in the record) unless the retrain reference runs
    for kind in needed_cul_references(cfg):
        train_tasks = plan.retrain_tasks() if kind == "retrain" else None
        ref = Engine(cul_reference_config(cfg, kind), seed, listeners, train_tasks=train_tasks, unlearning=False)
        res = ref.run()
        seconds += res.train_seconds + res.eval_seconds
        refs[kind] = res.acc
        out = ref.final_outputs(tasks)
        if kind == "retrain":
            dd = {t: distribution_distance(main_out[t][0], out[t][0], bs, u.dd_distance) for t in tasks}
        else:
            ag = {t: accuracy_gain(main_out[t][1], out[t][1], bs) for t in tasks}
    m = cul_metrics(dd, ag, acc, set(engine.unlearned), dd_scope=u.dd_scope, ag_scope=u.ag_scope,
                    distance=u.dd_distance, batch_size=bs)
    out = {k: (None if m[k] is None or np.isnan(m[k]) else m[k]) for k in CUL_METRICS}  # None: undefined
    out["cul_details"] = m | {"requests": {str(k): v for k, v in plan.requests.items()},
                              "retrain": "retrain" in refs, "original": "original" in refs}
    return out, refs, seconds


def _has_cul(cfg: ExperimentConfig, engine: Engine) -> bool:
    """Whether the run unlearns or reports continual-unlearning metrics (and so runs `_cul` after the main run)."""
    return engine.plan is not None or any(m in cfg.metrics for m in CUL_METRICS)


def _trains_again(cfg: ExperimentConfig, engine: Engine) -> bool:
    """Whether the run trains on its tasks again after the main run: a reference computed now, or unlearning's."""
    return any(getattr(cfg.references, k) == "auto" for k in needed_references(cfg)) or _has_cul(cfg, engine)


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None, listeners: Iterable = (),
                   reference_listeners: Iterable | None = None, seed: int | None = None,
                   reference_cache: ReferenceCache | None = None, title: str | None = None,
                   plots: bool = True, last_run: bool = False) -> ExperimentResult:
    """Run main + needed references with one seed, compute AA/BWT/FWT/FR, write the run folder if asked
    (with its plots unless `plots` is false). `last_run`: nothing else in this process needs the tasks, so
    they are freed before the run folder is written (plotting then reuses their memory: peak RSS stays at
    training's); if it also computes no reference now, no task is cached at all (each is used once).

    A run that fails once training has started raises RunFailed after writing what it produced to `out_dir`
    (matrix so far, history, config, references done, manifest with status FAILED, error.txt); an interrupted
    one does the same with status KILLED and re-raises KeyboardInterrupt. Errors before training (a bad
    device, missing data) propagate unchanged and write nothing.
    """
    start = time.perf_counter()
    seed = cfg.seed if seed is None else seed
    resolved = resolved_dict(cfg)
    resolved["seed"] = seed
    chash = config_hash(resolved)
    engine, main, stage = None, None, "main run"
    refs, sources = {}, {}
    try:
        engine = Engine(cfg, seed, listeners)
        with single_pass() if last_run and not _trains_again(cfg, engine) else nullcontext():
            main = engine.run()
        engine_seconds = main.train_seconds + main.eval_seconds
        for kind in needed_references(cfg):
            if getattr(cfg.references, kind) == "off":
                continue
            stage = f"reference run '{kind}'"
            refs[kind], sources[kind], seconds = _reference(cfg, kind, seed, reference_listeners or (),
                                                            reference_cache)
            engine_seconds += seconds
        stage = "metrics"
        metrics = compute_cl_metrics(main.acc, independent=refs.get("independent"), joint=refs.get("joint"),
                                     random=refs.get("random"), fr_variant=cfg.fr_variant)
        cul, cul_seconds = {}, 0.0
        if _has_cul(cfg, engine):
            stage = "continual-unlearning references"
            cul, cul_refs, cul_seconds = _cul(cfg, engine, main.acc, seed, reference_listeners or ())
            refs.update(cul_refs)
            sources.update({k: "run" for k in cul_refs})
            metrics.update(cul)
    except BaseException as e:
        partial = main if main is not None else (engine.partial_result() if engine is not None else None)
        if partial is None:  # failed before the first training step: nothing to keep
            raise
        interrupted = not isinstance(e, Exception)
        kept_in, kept = None, []
        if out_dir is not None:
            kept = write_partial_run_folder(Path(out_dir), partial, refs, sources, resolved, chash, seed,
                                            "KILLED" if interrupted else "FAILED", stage, e,
                                            time.perf_counter() - start)
            kept_in = Path(out_dir)
        if interrupted:
            e.clrepro_partial = RunFailed(stage, e, kept_in, kept)  # the CLI says where the outputs are
            raise
        raise RunFailed(stage, e, kept_in, kept) from e
    del engine
    engine_seconds += cul_seconds
    metrics = {k: v for k, v in metrics.items() if k in cfg.metrics or k == "series" or k.startswith("cul_")}
    metrics["fr_variant"] = cfg.fr_variant
    metrics["acc_weighting"] = cfg.trainer.acc_weighting
    metrics["references"] = sources
    metrics["task_extras"] = main.task_extras
    result = ExperimentResult(main, refs, sources, metrics, resolved, chash, None,
                              time.perf_counter() - start, engine_seconds)
    if last_run:
        release_task_cache()
    if out_dir is not None:
        write_run_folder(result, Path(out_dir), seed, title, plots)
    return result


def write_partial_run_folder(out: Path, main: RunResult, refs: dict, sources: dict, resolved: dict, chash: str,
                             seed: int, status: str, stage: str, error: BaseException, wall: float) -> list[str]:
    """What a failed or interrupted run produced, with a manifest saying so; returns the files written."""
    import traceback

    import yaml

    from clrepro.tracking.manifest import manifest

    out.mkdir(parents=True, exist_ok=True)
    done = [n for n in range(1, main.acc.shape[0] + 1) if not np.isnan(main.acc[n - 1]).all()]
    T = main.acc.shape[1]
    kept = []
    if main.multitask:
        if done:
            write_joint_csv(out / "acc.csv", main.acc[0])
            kept.append("acc.csv (joint row)")
    else:
        write_acc_csv(out / "acc.csv", main.acc, task_ids=done)
        write_acc_csv(out / "loss_cls.csv", main.loss, task_ids=done, value_name="average_classification_loss")
        kept += [f"acc.csv ({len(done)} of {T} tasks)", "loss_cls.csv"]
    for kind, mat in refs.items():
        if sources.get(kind) in ("run", "cache") and kind in ("independent", "joint", "random"):
            (write_joint_csv if kind == "joint" else write_acc_csv)(out / f"ref{kind}" / "acc.csv", mat)
            kept.append(f"ref{kind}/acc.csv")
    (out / "history.json").write_text(json.dumps(main.history) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    text = "".join(traceback.format_exception(error))
    (out / "error.txt").write_text(text)
    first = (str(error).strip().splitlines() or [""])[0]
    info = {"status": status, "failed_in": stage, "error": f"{type(error).__name__}: {first}".rstrip(": "),
            "tasks_done": len(done), "num_tasks": T,
            "timings": {"main_wall_seconds": round(main.wall_seconds, 3), "steps": main.steps}}
    (out / "manifest.json").write_text(json.dumps(manifest(seed, chash, main.device, wall, info), indent=2) + "\n")
    kept += ["history.json", "config.yaml", "error.txt", f"manifest.json (status {status})"]
    return kept


def write_run_folder(result: ExperimentResult, out: Path, seed: int, title: str | None = None,
                     plots: bool = True) -> Path:
    """acc.csv, loss_cls.csv, ref<kind>/acc.csv, metrics.json, config.yaml, manifest.json and, with `plots`, the
    plots (titled `title`, by default the experiment's name and seed)."""
    import yaml

    from clrepro.tracking.manifest import manifest

    out.mkdir(parents=True, exist_ok=True)
    main = result.main
    write_acc_csv(out / "acc.csv", main.acc)
    write_acc_csv(out / "loss_cls.csv", main.loss, value_name="average_classification_loss")
    for kind, mat in result.references.items():
        if result.reference_sources.get(kind) not in ("run", "cache"):
            continue
        (out / f"ref{kind}").mkdir(exist_ok=True)
        if kind == "joint":
            write_joint_csv(out / f"ref{kind}" / "acc.csv", mat)
        else:
            write_acc_csv(out / f"ref{kind}" / "acc.csv", mat)
    if "cul_details" in result.metrics:
        from clrepro.metrics.cul import write_cul_csv
        write_cul_csv(out, result.metrics["cul_details"])
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    (out / "config.yaml").write_text(yaml.safe_dump(result.config, sort_keys=False))
    timings = {"train_seconds": round(main.train_seconds, 3), "eval_seconds": round(main.eval_seconds, 3),
               "main_wall_seconds": round(main.wall_seconds, 3), "engine_seconds": round(result.engine_seconds, 3),
               "steps": main.steps}
    (out / "manifest.json").write_text(json.dumps(
        manifest(seed, result.config_hash, main.device, result.wall_seconds, {"status": "FINISHED", "timings": timings}),
        indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(main.history) + "\n")
    result.out_dir = out
    if not plots:
        return out
    from clrepro.tracking.plots import accuracy_heatmap, mask_capacity, network_capacity, task_curves

    title = title or f"{result.config.get('name', '')} seed={seed}"
    accuracy_heatmap(main.acc, out / "acc_matrix.png", title)
    task_curves(main.acc, out / "task_curves.png", title)
    mask_capacity(main.task_extras, out / "mask_capacity.png", title)
    network_capacity(main.task_extras, out / "network_capacity.png", title)
    result.out_dir = out
    return out
