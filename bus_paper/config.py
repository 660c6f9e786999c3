"""One config dataclass per concern; a profile (smoke / cpu / gpu) is a small TOML file filling them.

An ablation is a config change, never a code copy:

>>> p = load_profile("cpu")
>>> q = p.replace(**{"model.fusion": False})      # "no multiscale fusion"
>>> q.model.fusion, p.model.fusion
(False, True)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import PACKAGE_DIR

PROFILES_DIR = PACKAGE_DIR / "profiles"
PROFILE_NAMES = ("smoke", "cpu", "gpu")


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` as a field of type ``hint``, or a one-line ValueError naming ``where``.

    Takes what TOML and ``--set`` (JSON) give: lists for tuples, ints for floats, 3.0 for 3.
    A number given for a float field is kept as given (the run keys hash it as written)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        return _typed(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}={_show(value)}: expected a list, e.g. {where}=[...]")
        kinds = [args[0]] * len(value) if args[1:] == (Ellipsis,) else list(args)
        if len(kinds) != len(value):
            raise ValueError(f"{where}={_show(value)}: expected a list of {len(kinds)} values")
        return tuple(_typed(v, k, f"{where}[{i}]") for i, (v, k) in enumerate(zip(value, kinds)))
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, numbers.Integral) and not isinstance(value, bool)
          or isinstance(value, float) and value.is_integer(),
          float: isinstance(value, numbers.Real) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(hint, True)
    if not ok:
        what = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise ValueError(f"{where}={_show(value)}: expected {what[hint]}")
    return int(value) if hint is int else value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_fields(cfg: Any, section: str) -> None:
    """Type-check (and normalise) every field of a frozen config dataclass in place."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = _typed(getattr(cfg, f.name), hints[f.name], f"{section}.{f.name}")
        object.__setattr__(cfg, f.name, value)


def _require(cfg: Any, section: str, rule: str, test, *names: str) -> None:
    """ValueError ``section.name=value: rule`` for the first of ``names`` (None skipped) whose
    value fails ``test``."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not test(value):
            raise ValueError(f"{section}.{name}={_show(value)}: {rule}")


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 224            # side of the padded square the model sees at full scale
    conflict_policy: str = "exclude"  # duplicate groups with conflicting labels: exclude | keep
    # Near duplicates: phash distance for a candidate, then 64x64-thumbnail correlation to confirm.
    # Tuned on the real data (bus_paper/data/duplicates.py): BUSI re-crops of one scan reach only
    # 0.86-0.97 at distance 0-4; unrelated images (BUS-BRA, cross-dataset) stay below 0.88.
    phash_max_distance: int = 10
    min_correlation: float = 0.90
    val_fraction: float = 0.10
    test_fraction: float = 0.20
    max_images_per_dataset: int | None = None  # smoke profile: a small deterministic subset
    synthetic: bool = False          # smoke profile: phantom data instead of the real datasets

    def __post_init__(self) -> None:
        _check_fields(self, "data")
        _require(self, "data", "must be >= 1", lambda v: v >= 1, "image_size",
                 "max_images_per_dataset")
        _require(self, "data", "must be >= 0", lambda v: v >= 0, "phash_max_distance")
        _require(self, "data", "must be in (0, 1]", lambda v: 0 < v <= 1, "min_correlation")
        _require(self, "data", "must be in [0, 1)", lambda v: 0 <= v < 1, "val_fraction",
                 "test_fraction")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"data.val_fraction + data.test_fraction = "
                             f"{self.val_fraction + self.test_fraction:g}: must be < 1 "
                             "(nothing would be left to train on)")


@dataclass(frozen=True)
class ModelConfig:
    variant: str = "coatnet_nano"    # timm CoAtNet width: coatnet_nano | coatnet_0
    in_chans: int = 1                # grayscale ultrasound
    multiscale_input: bool = True    # image at several scales, one encoder pass each
    scales: tuple[int, ...] = (224, 128, 64)  # multiples of 32 (timm); see the methods page
    fusion: bool = True              # top-down multiscale feature fusion
    fusion_stages: tuple[int, ...] = (2, 3, 4)  # stages fused (upsampled to the shallowest)
    dilation: bool = True            # dilated depthwise convs in S1-S2 (see models/coatnet.py)
    proj_hidden: int = 2048          # eq. 3-4: Linear(d, 2048) -> BN -> ReLU -> Linear(2048, 128)
    proj_dim: int = 128
    num_classes: int = 2             # benign vs malignant: 2 logits, softmax / cross-entropy
    drop_rate: float = 0.0           # dropout before the classifier
    drop_path_rate: float = 0.0      # stochastic depth in the timm blocks

    def __post_init__(self) -> None:
        # Checkpoints store asdict(cfg) as JSON, which turns tuples into lists: the field check
        # coerces back so a config rebuilt from a checkpoint equals (and hashes like) the original.
        _check_fields(self, "model")
        if not self.scales:
            raise ValueError("model.scales is empty; give at least one input side, e.g. [128]")
        bad = [s for s in self.scales if not isinstance(s, int) or s < 32 or s % 32]
        if bad:
            raise ValueError(f"model.scales {list(self.scales)}: sides {bad} are invalid; CoAtNet "
                             "halves the map 5 times, so each side must be a multiple of 32 (>= 32)")
        if len(set(self.scales)) != len(self.scales) or self.scales[0] != max(self.scales):
            raise ValueError(f"model.scales {list(self.scales)}: sides must be distinct and the first "
                             "must be the largest (the input side; the others are downsampled from it)")
        fs = self.fusion_stages
        if list(fs) != sorted(set(fs)) or not all(0 <= s <= 4 for s in fs):
            raise ValueError(f"model.fusion_stages {list(fs)}: need increasing stage indices in 0..4 "
                             "(S0 stem .. S4 last transformer stage)")
        if self.fusion and len(fs) < 2:
            raise ValueError(f"model.fusion_stages {list(fs)}: fusion needs at least two stages")
        if self.in_chans < 1 or self.num_classes < 1 or self.proj_dim < 1 or self.proj_hidden < 1:
            raise ValueError("model.in_chans, num_classes, proj_dim and proj_hidden must be >= 1")
        if not (0.0 <= self.drop_rate < 1.0 and 0.0 <= self.drop_path_rate < 1.0):
            raise ValueError("model.drop_rate and model.drop_path_rate must be in [0, 1)")


@dataclass(frozen=True)
class PretrainConfig:
    enabled: bool = True             # False: random init ("No SSL" ablation)
    pool: tuple[str, ...] = ("busbra", "busuclm")  # unlabeled pool; BUSI/UDIAT never in it
    epochs: int = 1000
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.0
    temperature: float = 0.07
    augment: str = "ssl"             # ssl | reduced
    max_steps: int | None = None     # cap on optimizer steps per epoch (smoke)

    def __post_init__(self) -> None:
        _check_fields(self, "pretrain")
        _require(self, "pretrain", "must be >= 1", lambda v: v >= 1, "epochs", "batch_size",
                 "max_steps")
        _require(self, "pretrain", "must be > 0", lambda v: v > 0, "lr", "temperature")
        _require(self, "pretrain", "must be >= 0", lambda v: v >= 0, "weight_decay")


@dataclass(frozen=True)
class FinetuneConfig:
    datasets: tuple[str, ...] = ("busi", "udiat")
    epochs: int = 200
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    augment: str = "full"            # full | reduced | none
    label_fraction: float = 1.0      # share of training labels used (label-efficiency curve)
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int = 0
    patience: int | None = None      # early stopping on validation AUC (None: never)
    max_steps: int | None = None

    def __post_init__(self) -> None:
        _check_fields(self, "finetune")
        _require(self, "finetune", "must be >= 1", lambda v: v >= 1, "epochs", "batch_size",
                 "patience", "max_steps")
        _require(self, "finetune", "must be > 0", lambda v: v > 0, "lr")
        _require(self, "finetune", "must be >= 0", lambda v: v >= 0, "weight_decay")
        _require(self, "finetune", "must be in (0, 1]", lambda v: 0 < v <= 1, "label_fraction")


@dataclass(frozen=True)
class DinoConfig:
    """DINO hyperparameters of the DINO-ViT baseline (defaults: the ViT-S/16 recipe of main_dino.py);
    see :mod:`bus_paper.train.dino`."""
    out_dim: int = 65536              # prototypes K of the last layer
    hidden_dim: int = 2048            # head MLP width
    bottleneck_dim: int = 256         # head output before the weight-normalised last layer
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04  # linear warm-up of the teacher temperature from this ...
    warmup_teacher_temp_epochs: int = 0  # ... over these many epochs
    student_temp: float = 0.1
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996   # EMA momentum at step 0, cosine to 1 at the end
    n_local_crops: int = 8
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_size: int | None = None     # None: 96/224 of the image side (DINO's ratio), see local_side

    def __post_init__(self) -> None:
        _check_fields(self, "dino")  # also turns JSON's lists back into tuples
        if self.out_dim < 1 or self.hidden_dim < 1 or self.bottleneck_dim < 1:
            raise ValueError("dino out_dim, hidden_dim and bottleneck_dim must be >= 1")
        if not (self.teacher_temp > 0 and self.warmup_teacher_temp > 0 and self.student_temp > 0):
            raise ValueError("dino temperatures must be > 0")
        if not (0 <= self.center_momentum <= 1 and 0 <= self.momentum_teacher <= 1):
            raise ValueError("dino center_momentum and momentum_teacher must be in [0, 1]")
        if self.n_local_crops < 0 or self.warmup_teacher_temp_epochs < 0:
            raise ValueError("dino n_local_crops and warmup_teacher_temp_epochs must be >= 0")

    def local_side(self, img_size: int, multiple: int) -> int:
        """Side of the local crops: DINO's 96 px at 224 px, rounded to the backbone's multiple."""
        if self.local_size is not None:
            if self.local_size % multiple:
                raise ValueError(f"dino local_size {self.local_size} must be a multiple of {multiple}")
            return self.local_size
        return max(multiple, round(img_size * 96 / 224 / multiple) * multiple)


@dataclass(frozen=True)
class RunConfig:
    device: str = "auto"             # auto | cpu | cuda
    precision: str = "bf16"          # bf16 | fp32
    channels_last: bool = True
    num_workers: int = 0
    threads: int | None = None       # torch.set_num_threads; None: leave as is
    compile: bool = False

    def __post_init__(self) -> None:
        _check_fields(self, "run")
        _require(self, "run", "must be 'bf16' or 'fp32'", lambda v: v in ("bf16", "fp32"),
                 "precision")
        _require(self, "run", "must be >= 0", lambda v: v >= 0, "num_workers")
        _require(self, "run", "must be >= 1", lambda v: v >= 1, "threads")


class Section(dict):
    """A paper's own settings (``[papers.<paper>]`` in a profile TOML): a read-only, hashable
    dict, because a profile is frozen. Lists become tuples, tables nested Sections."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__((k, _freeze(v)) for k, v in dict(*args, **kwargs).items())

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a profile's sections are read-only: use Profile.replace(...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return Section(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class Profile:
    name: str = "custom"
    description: str = ""
    #: what the whole book may take from an empty cache at this profile, in minutes (None: no
    #: target); `bus-paper run --from-empty-cache` measures it (book/results/reproducibility/)
    book_minutes: float | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    run: RunConfig = field(default_factory=RunConfig)
    #: the papers' own settings, ``[papers.p002]`` etc.: paper -> :class:`Section`. The library
    #: does not type them; each paper builds its own settings from :meth:`section`.
    papers: Section = field(default_factory=Section)

    def section(self, paper: str) -> dict[str, Any]:
        """The ``[papers.<paper>]`` settings of this profile (``{}`` when it has none)."""
        return dict(self.papers.get(paper, {}))

    def replace(self, **dotted: Any) -> Profile:
        """Copy with fields changed, named ``section.field`` (e.g. ``model.fusion=False``)."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in dotted.items():
            if "." in key:
                sec, name = key.split(".", 1)
                sections.setdefault(sec, {})[name] = value
            else:
                top[key] = value
        changes: dict[str, Any] = dict(top)
        if "papers" in sections:  # papers.<paper>.<key>
            papers = {k: dict(v) for k, v in self.papers.items()}
            for dotted_key, value in sections.pop("papers").items():
                paper, _, key = dotted_key.partition(".")
                if not key:
                    raise KeyError(f"papers.{dotted_key}: name a setting, e.g. papers.p002.epochs")
                papers.setdefault(paper, {})[key] = value
            changes["papers"] = Section(papers)
        for sec, values in sections.items():
            current = getattr(self, sec, None)
            if not dataclasses.is_dataclass(current):
                raise KeyError(f"unknown config section {sec!r}")
            changes[sec] = _build(type(current), {**dataclasses.asdict(current), **values}, sec)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """The budget in words, from the values themselves (a description written by hand drifted:
        it said 8 fine-tuning epochs for a profile that sets 5)."""
        m, pt, ft = self.model, self.pretrain, self.finetune
        scales = f" (scales {'/'.join(map(str, m.scales))})" if m.multiscale_input else ""
        return (f"{self.description.rstrip('.')}: {self.data.image_size} px{scales}, {m.variant}, "
                f"{pt.epochs} SSL epochs at batch {pt.batch_size}, {ft.epochs} fine-tuning epochs "
                f"at batch {ft.batch_size}, seeds {', '.join(map(str, ft.seeds))}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise KeyError(f"unknown key(s) in [{where}]: {sorted(unknown)}; known: {sorted(names)}")
    # each dataclass's __post_init__ checks types and ranges (and turns TOML's lists into tuples)
    return cls(**values)


def profile_from_dict(d: dict[str, Any], name: str = "custom") -> Profile:
    kinds = {f.name: f for f in dataclasses.fields(Profile)}
    kwargs: dict[str, Any] = {"name": d.get("name", name), "description": d.get("description", "")}
    if d.get("book_minutes") is not None:
        if not isinstance(d["book_minutes"], (int, float)) or d["book_minutes"] <= 0:
            raise ValueError(f"book_minutes must be a positive number, got {d['book_minutes']!r}")
        kwargs["book_minutes"] = float(d["book_minutes"])
    for key, value in d.items():
        if key in ("name", "description", "book_minutes"):
            continue
        if key == "papers":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ValueError("[papers] holds one table per paper, e.g. [papers.p002]")
            kwargs["papers"] = Section(value)
            continue
        if key not in kinds:
            raise KeyError(f"unknown profile section [{key}]")
        kwargs[key] = _build(type(getattr(Profile(), key)), value, key)
    return Profile(**kwargs)


def load_profile(name_or_path: str | Path) -> Profile:
    """Load ``smoke`` / ``cpu`` / ``gpu`` (shipped files) or any TOML file with the same sections."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    p = Path(name_or_path)
    if not p.suffix:
        p = PROFILES_DIR / f"{name_or_path}.toml"
    if not p.exists():
        raise FileNotFoundError(f"no profile {name_or_path!r} (looked at {p}); "
                                f"shipped profiles: {', '.join(PROFILE_NAMES)}")
    with open(p, "rb") as fh:
        return profile_from_dict(tomllib.load(fh), name=p.stem)


def as_list(value: Any) -> list[Any]:
    """A list parameter as papermill passes it: a list, its JSON text (``-p seeds "[0, 1]"``),
    comma-separated text (``-p folds 0,1``, ``-p variant lr``) or one number (``-p folds 3``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return list(json.loads(text))
        return [v.strip() for v in text.split(",") if v.strip()]
    if isinstance(value, numbers.Integral):   # int or numpy integer
        return [int(value)]
    return list(value)
