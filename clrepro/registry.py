"""Registries mapping config names to clrepro classes (the only things a config may instantiate)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from clrepro.errors import ConfigError


@dataclass
class Registry:
    """A name → class map for one kind of component, filled by the `register` decorator."""

    kind: str
    modules: tuple[str, ...] = ()  # modules whose import registers the built-in entries
    _entries: dict[str, type] = field(default_factory=dict)
    _loaded: bool = False

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            cls.registry_name = name
            self._entries[name] = cls
            return cls

        return deco

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self.modules:
                importlib.import_module(mod)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str, key: str = "name") -> type:
        self._load()
        if name not in self._entries:
            raise ConfigError(key, f"unknown {self.kind} '{name}'", self.names())
        return self._entries[name]

    def resolve(self, node: dict[str, Any], key: str) -> type:
        """The class a config node names, by `name` or by a `_target_` that must be a registered class."""
        self._load()
        target = node.get("_target_")
        if target is not None:
            for cls in self._entries.values():
                if f"{cls.__module__}.{cls.__qualname__}" == target:
                    return cls
            allowed = [f"{c.__module__}.{c.__qualname__}" for c in self._entries.values()]
            raise ConfigError(f"{key}._target_", f"'{target}' is not a registered clrepro {self.kind}", sorted(allowed))
        if "name" not in node:
            raise ConfigError(f"{key}.name", "missing", self.names())
        return self.get(str(node["name"]), key=f"{key}.name")


ALGORITHMS = Registry(
    "algorithm",
    modules=(
        "clrepro.algorithms.finetuning",
        "clrepro.algorithms.fix",
        "clrepro.algorithms.independent",
        "clrepro.algorithms.joint",
        "clrepro.algorithms.random",
        "clrepro.algorithms.hat",
        "clrepro.algorithms.adahat",
        "clrepro.algorithms.fgadahat",
        "clrepro.algorithms.amnesiac_hat",
        "clrepro.algorithms.ewc",
        "clrepro.algorithms.online_ewc",
        "clrepro.algorithms.si",
        "clrepro.algorithms.lwf",
        "clrepro.algorithms.der",
        "clrepro.algorithms.clpu_derpp",
        "clrepro.algorithms.flashback",
    ),
)
BACKBONES = Registry("backbone", modules=("clrepro.backbones.mlp", "clrepro.backbones.resnet"))
BENCHMARKS = Registry("benchmark", modules=("clrepro.data.benchmarks",))
