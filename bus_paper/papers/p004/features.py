"""Section 3.3 of paper 004: pooled embeddings of ResNet-50, VGG16 and EfficientNet-B0 (and a
ViT for the heatmap comparison), frozen, from our own self-supervised pretraining.

No ImageNet weights can be loaded here, so every backbone is pretrained on the matching modality
with the book's SimCLR engine (:class:`~bus_paper.train.pretraining.PretrainStage`, the same
objective, views, optimiser and epochs as paper 000's baselines):

- ultrasound: the unlabeled pool of BUS-BRA + BUS-UCLM (:func:`bus_paper.train.pretrain`, cached
  and shared with the Table 1 chapter (ResNet-50, and the DINO ViT-S/16) and paper 001's chapter
  (VGG16, 2 epochs at the cpu profile, :func:`bus_paper.papers.p000.experiments.pretraining_profile`));
- mammography: lesion-sized crops at random breast sites of mini-MIAS films
  (:func:`~.prep.tissue_pool`; no label and no lesion location of the film itself is used).
  With ``pool="all"`` every film of every woman is in the pool, the test women's films included
  (transductive: they are seen without labels); with ``pool="train"`` only the films of one
  split's training women (one pretraining per split seed).

*Random* initialisation (``init="random"``, seed 0) is the floor: what the architecture alone
gives. Features are the backbones' pooled outputs (``BaselineNet.encode``: global average pooling
of the last map; VGG16: of its fc6/fc7 map, 4096-d), extracted in eval mode under the profile's
autocast and cached per encoder, ROI set, z-score switch and augmentation copy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...config import Profile
from ...core.atomic import atomic_path
from ...paths import runs_dir
from ...train.engine import releases_run_locks
from .prep import ImageZ, Prep, RoiSet, augmented_copies, tissue_pool

LABELS = {"resnet50": "ResNet-50", "vgg16": "VGG16", "efficientnet_b0": "EfficientNet-B0",
          "vit_small": "ViT-S/16"}


@dataclass(frozen=True)
class Encoder:
    """A frozen feature extractor: ``backbone`` (a :mod:`bus_paper.models.baselines` name),
    ``init`` (``ssl``: SimCLR; ``dino``: DINO; ``random``) and the ``path`` of its
    ``encoder.pt`` (None for random init)."""
    backbone: str
    init: str
    modality: str
    path: Path | None = None

    @property
    def key(self) -> str:
        if self.path is None:
            import timm
            return f"random:{self.backbone}:timm{timm.__version__}"
        return f"{self.init}:{Path(self.path).parent.name}"


def _pretrain_profile(profile: Profile, backbone: str) -> Profile:
    from ..p000.experiments import pretraining_profile
    return pretraining_profile(profile, backbone)


def ultrasound_encoder(profile: Profile, root, backbone: str, init: str = "ssl") -> Encoder:
    """The US encoder of ``backbone``: SimCLR on the US pool (``ssl``), DINO (``dino``, the Table 1
    DINO-ViT), or random."""
    if init == "random":
        return Encoder(backbone, "random", "ultrasound")
    if init == "dino":
        from ...train.dino import dino_pretrain
        return Encoder(backbone, "dino", "ultrasound",
                       dino_pretrain(profile, root, name=backbone))
    from ...train.pretraining import pretrain
    path = pretrain(_pretrain_profile(profile, backbone), root, baseline=backbone)
    return Encoder(backbone, "ssl", "ultrasound", path)


@releases_run_locks
def mias_encoder(profile: Profile, root, backbone: str, films: list[str], prep: Prep,
                 per_film: int = 2, init: str = "ssl") -> Encoder:
    """SimCLR on mini-MIAS tissue crops of ``films`` (see the module docstring), cached."""
    if init == "random":
        return Encoder(backbone, "random", "mammography")
    from ...core.runs import SELECT_LAST_EPOCH, config_part, recipe_key
    from ...data.checksum import dataset_checksum
    from ...train.data import to_tensor
    from ...train.engine import checkpoint_intact, hold_run_lock, read_or_heal, save_checkpoint
    from ...train.pretraining import PretrainStage, baseline_config
    prof = _pretrain_profile(profile, backbone)
    net = baseline_config(prof, backbone)
    key = recipe_key("paper004-mias-simclr", network=net, pretrain=config_part(prof.pretrain),
                     prep=prep.image_part(), size=prof.data.image_size, films=sorted(films),
                     per_film=per_film, checksum=dataset_checksum(root, "mias"),
                     selection=SELECT_LAST_EPOCH)
    run_dir = runs_dir() / "paper004" / "pretrain-mias" / key
    out = run_dir / "encoder.pt"
    hold_run_lock(run_dir)
    if not read_or_heal(out, checkpoint_intact):  # absent, or truncated (moved aside)
        images = to_tensor(tissue_pool(root, sorted(films), prep, prof.data.image_size, per_film))
        stage = PretrainStage(prof, images, run_dir, key, baseline=backbone)
        t0 = time.perf_counter()
        history = stage.fit()
        save_checkpoint(out, {"encoder": stage.model.m.encoder_state_dict(), "model_config": net,
                              "normalizer": stage.normalizer.to_dict(), "key": key,
                              "pool": ["mias"], "n_images": len(images),
                              "history": json.dumps(history.epochs),
                              "seconds": time.perf_counter() - t0})
        (run_dir / "last.pt").unlink(missing_ok=True)
    return Encoder(backbone, "ssl", "mammography", out)


def load_encoder(profile: Profile, enc: Encoder, device: str = "cpu") -> torch.nn.Module:
    """The backbone (with heads) of ``enc`` in eval mode."""
    from ...models import build_network
    from ...train.engine import load_checkpoint, seed_everything
    from ...train.pretraining import baseline_config
    if enc.path is None:
        seed_everything(0)
        model = build_network(baseline_config(profile, enc.backbone))
    else:
        state = load_checkpoint(enc.path)
        model = build_network(state["model_config"])
        model.load_encoder_state_dict(state["encoder"])
    return model.to(device).eval()


@torch.no_grad()
def extract(model: torch.nn.Module, images_u8: np.ndarray, zscore: bool, run,
            batch_size: int = 64) -> np.ndarray:
    """Pooled features ``[N, D]`` float32 of uint8 images ``[N, S, S]`` (eval, autocast)."""
    from ...train.engine import autocast, prepare_input
    device = next(model.parameters()).device
    norm = ImageZ(zscore)
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images_u8[i:i + batch_size])).unsqueeze(1)
        x = norm(x.to(device).float() / 255.0)
        with autocast(device, run.precision):
            out.append(model.encode(prepare_input(x, run)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def features(profile: Profile, enc: Encoder, roi: RoiSet, prep: Prep, copies: int = 0,
             model: torch.nn.Module | None = None) -> np.ndarray:
    """Features of every ROI and of ``copies`` augmented versions: float32 ``[1 + copies, N, D]``,
    each copy cached on disk (``runs/paper004/features``)."""
    from ...core.runs import recipe_key
    from ...train.engine import read_or_heal, select_device
    out, todo = [], []
    folder = runs_dir() / "paper004" / "features"
    files = [folder / (recipe_key("paper004-features", encoder=enc.key, roi=roi.key,
                                  zscore=prep.zscore, copy=c)
                       + f"-{roi.dataset}-{enc.backbone}-{enc.init}-c{c}.npy")
             for c in range(copies + 1)]
    for c, f in enumerate(files):
        out.append(read_or_heal(f, np.load, delete=True))  # a truncated cache file is rebuilt
        if out[c] is None:
            todo.append(c)
    if todo:
        net = model if model is not None else load_encoder(profile, enc, select_device(profile.run))
        augmented = augmented_copies(roi.images, max(todo)) if max(todo) > 0 else None
        for c in todo:
            images = roi.images if c == 0 else augmented[c - 1]
            arr = extract(net, images, prep.zscore, profile.run)
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(files[c]) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)   # a file object: np.save appends ".npy" to a bare name
            out[c] = arr
    return np.stack(out)
