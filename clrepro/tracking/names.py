"""What the MLflow UI shows: run names, experiment descriptions, the source/commit/user columns, the view kind."""

from __future__ import annotations

import functools
import getpass
import re
import sys
from pathlib import Path
from typing import Any

# MLflow 3's experiment kind: "custom_model_development" marks a model-training experiment (runs, metrics,
# artifacts) rather than a GenAI one (traces). MLflow's UI reads it where its GenAI/"Model training" switch is
# off; 3.17's switch is a per-browser setting, which `clrepro ui` (the `clrepro` MLflow app) presets.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
NOTE = "mlflow.note.content"  # the description MLflow shows on an experiment's or a run's page
SOURCE_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit")


@functools.lru_cache(maxsize=1)
def source_tags() -> dict[str, str]:
    """The tags behind MLflow's User, Source and Version columns: who ran what, at which commit of clrepro.

    MLflow's fluent API sets them from its context; clrepro creates runs with the client, so it sets them
    itself (once per process, in the driver: trial and seed runs copy them from their parent)."""
    from clrepro.tracking.manifest import git_state

    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without /etc/passwd entry)
        user = "unknown"
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if argv0 == "clrepro":
        source = " ".join(["clrepro", *sys.argv[1:]])
    elif argv0 in ("pytest", "__main__.py", "-c", "python"):
        source = argv0
    else:
        source = " ".join(sys.argv)
    tags = {"mlflow.user": user, "mlflow.source.name": source[:500], "mlflow.source.type": "LOCAL"}
    commit = git_state().get("commit")
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def short_number(v: Any) -> str:
    """A compact value for a run name: 200, 0.12, 8.4e-3, True, adahat."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or (float(v).is_integer() and abs(v) < 1e5):
        return str(int(v))
    if 1e-2 <= abs(v) < 1e4:
        return f"{v:.3g}"
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _symbol(key: str, config: dict | None) -> str:
    """A hyperparameter's paper symbol where its schema declares one (λ, alpha, b_L, lr), else its last name."""
    last = key.rsplit(".", 1)[-1]
    section, _, name = key.partition(".")
    try:
        import dataclasses

        if section == "algorithm" and "." not in name and config is not None:
            from clrepro.registry import ALGORITHMS

            fields = dataclasses.fields(ALGORITHMS.get(str(config["algorithm"]["name"])).Config)
        elif section == "optimizer":
            from clrepro.config.schema import OptimizerConfig

            fields = dataclasses.fields(OptimizerConfig)
        else:
            return last
        meta = next((f.metadata for f in fields if f.name == name), {})
        return meta.get("symbol") or last
    except Exception:  # an unknown algorithm or key: the plain name reads as well
        return last


def params_label(params: dict, config: dict | None = None) -> str:
    """`s_max=200 λ=0.12 lr=8.4e-3`: a trial's sampled hyperparameters, in search-space order."""
    return " ".join(f"{_symbol(k, config)}={short_number(v)}" for k, v in params.items() if not k.startswith("_"))


def tune_trial_name(trial) -> str:
    """Tune's `trial_name_creator`: `t007` for the search trial Optuna numbers 7 (Tune's creation counter − 1:
    the search trials are created first, one Optuna trial each, as in the sweep's optimisation history), and
    `final1-s101` for the final group's trial of rank 1 on report seed 101."""
    final = (getattr(trial, "config", None) or {}).get("_final")
    if final:
        return f"final{final['rank']}-s{final['seed']}"
    counter = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return f"t{int(counter) - 1:03d}" if counter.isdigit() and int(counter) > 0 else str(trial.trial_id)


def current_trial_label(default: str) -> str:
    """This Tune trial's short name (`t007`), or `default` outside a sweep named by `tune_trial_name`."""
    try:
        from ray import tune

        name = tune.get_context().get_trial_name()
    except Exception:
        return default
    return name if name and re.fullmatch(r"t\d+|final\d+-s\d+", name) else default


def sweep_description(spec, experiment_config: dict | None = None) -> str:
    """The sweep experiment's description (Markdown, shown above its runs)."""
    space = ", ".join(f"`{k}`" for k in spec.search_space) or "nothing"
    tune = ", ".join(map(str, spec.seeds.tune))
    report = ", ".join(map(str, spec.seeds.report))
    bench = ""
    if experiment_config:
        bench = (f" ({experiment_config.get('algorithm', {}).get('name', '?')} on "
                 f"{experiment_config.get('benchmark', {}).get('name', '?')})")
    lines = [
        f"**clrepro sweep `{spec.name}`**: experiment `{spec.experiment.name}`{bench}.",
        f"{spec.sampler.name.upper()} search over {space}; {spec.num_samples} trials; objective "
        f"{spec.objective.metric} ({spec.objective.mode}), the mean over tune seeds {tune}.",
        f"Best {spec.final.top_k} configuration(s) re-run on report seeds {report or '(none)'} (group `final`).",
        "",
        "Runs nest sweep → trial → seed. Trial runs are named by Optuna's trial number and their "
        "hyperparameters (`t007 s_max=200 lr=8.4e-3`), seed runs by their seed. Metrics: AA, BWT, FWT, FR "
        f"(and DD, AGR, AA_remaining in unlearning sweeps) as fractions; computed here: {', '.join(spec.metrics)}. "
        "Stepped metrics are per task: step N = after training task N.",
    ]
    return "\n".join(lines)
