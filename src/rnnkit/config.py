"""Training configuration: one dataclass, loadable from TOML or YAML, overridable from the
command line, with errors that name the key that is wrong."""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from rnnkit.errors import UserError
from rnnkit.presets import PRESET_TABLE, preset_values

__all__ = ["TrainConfig", "ConfigError", "load_config_file", "config_from_mapping", "resolve_config",
           "KNOWN_CORPORA"]

KNOWN_CORPORA = ("human_numbers", "ptb", "wikitext-2", "wikitext-103", "tinyshakespeare", "folder")


class ConfigError(UserError):
    """A configuration value or file that cannot be used; the message says which and how to fix it."""


@dataclass
class TrainConfig:
    """Everything `rnnkit train` needs; saved as `config.json` in the run folder."""

    corpus: str = "human_numbers"  # one of KNOWN_CORPORA; 'folder' reads train/valid/test files
    data: str | None = None  # folder of the corpus (required for all but human_numbers)
    preset: str = "small"  # rnnkit.presets: a model size (small, fastai, paper) or a recipe (paper-ptb, paper-wt2)
    emb_sz: int | None = None  # override the preset's embedding size
    n_hid: int | None = None  # override the preset's hidden size
    n_layers: int | None = None  # override the preset's number of LSTM layers
    drop_mult: float = 1.0  # scales all five AWD-LSTM dropouts
    output_p: float | None = None  # override single dropouts of the preset
    hidden_p: float | None = None
    input_p: float | None = None
    embed_p: float | None = None
    weight_p: float | None = None
    bs: int = 64  # batch size (rows of the token stream)
    bptt: int = 16  # base sequence length
    random_bptt: bool = False  # AWD-LSTM's variable sequence length (with lr rescaling)
    epochs: int = 15
    time_budget: float | None = None  # minutes of training (validation not counted); the schedule fits it
    lr: float = 1e-2  # peak learning rate of the schedule
    lr_find: bool = False  # run the LR finder first and use its 'fall' suggestion
    schedule: str = "one_cycle"  # one_cycle, flat_cos or constant
    wd: float = 0.1  # weight decay (decoupled)
    alpha: float = 2.0  # AR scale
    beta: float = 1.0  # TAR scale
    clip: float | None = None  # gradient clipping norm (None: no clipping; AWD-LSTM used 0.25)
    optimizer: str = "adam"  # adam or sgd
    ntasgd: bool = False  # non-monotonically triggered averaged SGD (AWD-LSTM)
    seed: int = 42
    threads: int | None = None  # torch CPU threads (default: torch's choice)
    precision: str = "fp32"  # fp32, bf16 or fp16
    device: str = "auto"  # auto (CUDA when available, then MPS, then CPU), cpu, cuda, cuda:N or mps
    checkpoint_every: int = 0  # also checkpoint every N batches (0: only at the end of each epoch)
    out: str = "runs/latest"  # the run folder
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run

    @staticmethod
    def validate_device(device: str) -> str:
        """`device` if it is written as a device (auto, cpu, cuda, cuda:N or mps); whether it exists is
        checked when the run starts."""
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(device)):
            raise ConfigError(f"config: device={device!r} must be auto, cpu, cuda, cuda:N or mps")
        return str(device)

    def validate(self) -> TrainConfig:
        """Check values that types alone do not catch; raise ConfigError naming the key."""
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config: {key}={getattr(self, key)!r} {why}")

        if self.corpus not in KNOWN_CORPORA:
            raise bad("corpus", f"is not a known corpus; use one of {', '.join(KNOWN_CORPORA)}")
        if self.preset not in PRESET_TABLE:
            raise bad("preset", f"is not a preset; use one of {', '.join(PRESET_TABLE)}")
        if self.schedule not in ("one_cycle", "flat_cos", "constant"):
            raise bad("schedule", "must be one_cycle, flat_cos or constant")
        if self.optimizer not in ("adam", "sgd"):
            raise bad("optimizer", "must be adam or sgd")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise bad("precision", "must be fp32, bf16 or fp16")
        self.validate_device(self.device)
        if not self.lr > 0:
            raise bad("lr", "must be positive (e.g. 3e-3), or use --lr-find")
        for key in ("bs", "bptt", "epochs"):
            if getattr(self, key) <= 0:
                raise bad(key, "must be a positive integer")
        if self.seed < 0:
            raise bad("seed", "must be >= 0")
        for key in ("emb_sz", "n_hid", "n_layers", "threads"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                raise bad(key, "must be a positive integer")
        for key in ("output_p", "hidden_p", "input_p", "embed_p", "weight_p"):
            v = getattr(self, key)
            if v is not None and not 0 <= v < 1:
                raise bad(key, "must be a probability in [0, 1)")
        if self.drop_mult < 0:
            raise bad("drop_mult", "must be >= 0")
        if self.wd < 0 or self.alpha < 0 or self.beta < 0:
            raise ConfigError("config: wd, alpha and beta must be >= 0")
        if self.clip is not None and not self.clip > 0:
            raise bad("clip", "must be positive, or left out for no clipping")
        if self.time_budget is not None and not self.time_budget > 0:
            raise bad("time_budget", "must be a positive number of minutes, or left out")
        if self.checkpoint_every < 0:
            raise bad("checkpoint_every", "must be >= 0")
        if self.corpus not in ("human_numbers",) and not self.data:
            raise ConfigError(f"config: corpus={self.corpus!r} needs data=<folder of the corpus files>")
        return self

    def to_json(self) -> str:
        """The config as JSON text (what the run folder keeps)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _check_type(key: str, value: Any) -> Any:
    hint = _HINTS[key]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    allowed = tuple(typing.get_origin(a) or a for a in allowed)
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if bool not in allowed and isinstance(value, bool):
        ok = False
    else:
        ok = isinstance(value, tuple(a for a in allowed if a is not type(None)))
    if not ok:
        names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
        raise ConfigError(f"config: {key} must be {names}, got {value!r} ({type(value).__name__})")
    return value


def config_from_mapping(values: Mapping[str, Any], base: TrainConfig | None = None,
                        source: str = "config") -> TrainConfig:
    """A TrainConfig from `base` (defaults) updated with `values`; unknown or ill-typed keys are errors."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} must hold a table of options, not {type(values).__name__}")
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        k = key.replace("-", "_")
        if k not in _FIELDS:
            close = difflib.get_close_matches(k, list(_FIELDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        setattr(cfg, k, _check_type(k, value))
    return cfg


def resolve_config(file_values: Mapping[str, Any] | None = None, cli_values: Mapping[str, Any] | None = None,
                   file_source: str = "config file", cli_source: str = "command line") -> TrainConfig:
    """The validated config of a new run: TrainConfig defaults < preset < config file < command line.

    The preset is the one the command line names, else the file's, else `budget` when a time budget is
    given, else the default; its values
    (`rnnkit.presets`) may depend on the values given without it. Unknown keys and wrong types are named
    with their source, as `config_from_mapping` does."""
    layers = [(dict(file_values or {}), file_source), (dict(cli_values or {}), cli_source)]
    given = TrainConfig()
    for values, source in layers:  # checked before the preset is looked up: a typo is named where it is
        given = config_from_mapping(values, base=given, source=source)
    named = any("preset" in values for values, _ in layers)
    if not named and given.time_budget is not None:
        given.preset = "budget"  # a time budget without a preset gets the recipe made for short budgets
    if given.preset not in PRESET_TABLE:
        raise ConfigError(f"config: preset={given.preset!r} is not a preset; use one of {', '.join(PRESET_TABLE)}")
    cfg = config_from_mapping(preset_values(given.preset, dataclasses.asdict(given)),
                              source=f"preset {given.preset!r}")
    cfg.preset = given.preset
    for values, source in layers:
        cfg = config_from_mapping(values, base=cfg, source=source)
    return cfg.validate()


def _one_line(e: Exception) -> str:
    """A parse error's message on one line: PyYAML's spans several (context, problem, an excerpt)."""
    mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
    if mark is not None and problem:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (.toml) or YAML (.yaml/.yml) config file into a dict of options."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; give a .toml, .yaml or .yml file")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror or e}") from None
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data: Any = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {p}: use a .toml, .yaml or .yml file")
    except ConfigError:
        raise
    except Exception as e:  # parse errors of either library, with their line numbers
        raise ConfigError(f"config file {p} could not be parsed: {_one_line(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a table of options, not {type(data).__name__}")
    return data
