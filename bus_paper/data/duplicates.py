"""Pixel-identical and near-duplicate images, within and across datasets.

A random split of BUSI, UDIAT or BUS-UCLM leaks: the same scan is filed twice, sometimes under two
names, two patient codes or even two labels. We find such images in three steps:

1. *identical*: equal hashes of the decoded pixels (file bytes differ after re-encoding);
2. *candidates*: perceptual hashes (``imagehash.phash``, 64 bits) within
   ``cfg.phash_max_distance`` bits. The hash of the mirrored image is compared too, because a
   left-right flipped copy of a scan is the same lesion. All N^2 Hamming distances are computed
   with numpy on packed 64-bit words, in row blocks;
3. *confirmation*: the Pearson correlation of 64x64 thumbnails (in the matching orientation) must
   reach ``cfg.min_correlation``. The hash alone is too loose for ultrasound, whose images share
   a dark background and a similar speckle texture.

Pairs are joined into groups (connected components); a split must keep a group in one part.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..config import DataConfig
from ..core.atomic import atomic_path
from ..paths import cache_dir
from .checksum import dataset_checksum
from .imageio import read_image

COLUMNS = ["dataset", "image_a", "image_b", "dataset_b", "kind", "phash_distance", "correlation",
           "mirrored", "label_a", "label_b", "conflict", "group"]
THUMB = 64
_BLOCK = 512      # rows of the Hamming matrix computed at once (512 x N uint8: small)
_VERSION = 1      # bump when the algorithm changes, so cached results are recomputed


@dataclass(frozen=True)
class Fingerprints:
    """Per-image hashes; row i belongs to the i-th path given to :func:`fingerprint`."""
    pixel_hash: np.ndarray   # [N] str: sha1 of shape + decoded pixels
    phash: np.ndarray        # [N, 2] uint64: perceptual hash of the image and of its mirror
    thumbs: np.ndarray       # [N, 2, THUMB*THUMB] float32: zero-mean, unit-norm thumbnails


def fingerprint(paths: list[Path]) -> Fingerprints:
    """Decode every image once and compute its pixel hash, perceptual hashes and thumbnails."""
    n = len(paths)
    pixel_hash = np.empty(n, dtype=object)
    phash = np.zeros((n, 2), dtype=np.uint64)
    thumbs = np.zeros((n, 2, THUMB * THUMB), dtype=np.float32)
    for i, path in enumerate(paths):
        gray = read_image(path)
        pixel_hash[i] = hashlib.sha1(repr(gray.shape).encode() + gray.tobytes()).hexdigest()
        img = Image.fromarray(gray)
        for k, view in enumerate((img, ImageOps.mirror(img))):
            bits = imagehash.phash(view).hash.ravel()
            phash[i, k] = np.packbits(bits).view(">u8")[0]
        t = np.asarray(img.resize((THUMB, THUMB), Image.Resampling.BILINEAR), np.float32)
        t = t - t.mean()
        norm = float(np.linalg.norm(t))
        t = t / norm if norm > 0 else t       # a flat image correlates with nothing
        thumbs[i, 0] = t.ravel()
        thumbs[i, 1] = t[:, ::-1].ravel()
    return Fingerprints(pixel_hash.astype(str), phash, thumbs)


def candidate_pairs(phash: np.ndarray, max_distance: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs i < j whose perceptual hashes (either orientation) are within ``max_distance`` bits.

    Returns ``(i, j, distance)``. Vectorised: XOR + popcount on uint64 words, one row block at a
    time, so 3,500 images take well under a second.
    """
    if phash.ndim != 2 or phash.shape[1] != 2:
        raise ValueError(f"phash must be [N, 2] (image, mirror), got shape {phash.shape}")
    n = len(phash)
    plain, mirror = phash[:, 0], phash[:, 1]
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, _BLOCK):
        rows = plain[start:start + _BLOCK, None]
        dist = np.minimum(np.bitwise_count(rows ^ plain[None, :]),
                          np.bitwise_count(rows ^ mirror[None, :]))
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = jj > ii
        out_i.append(ii[keep])
        out_j.append(jj[keep])
        out_d.append(dist[ii[keep] - start, jj[keep]])
    if not out_i:                     # no images at all
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d).astype(np.int64)


def _check_manifest(manifest: pd.DataFrame) -> None:
    missing = {"dataset", "path", "label"} - set(manifest.columns)
    if missing:
        raise ValueError(f"manifest lacks column(s) {sorted(missing)}")
    if manifest["path"].duplicated().any():
        dup = manifest.loc[manifest["path"].duplicated(), "path"].iloc[0]
        raise ValueError(f"manifest paths must be unique; {dup!r} appears twice")


def find_duplicates(manifest: pd.DataFrame, root: str | Path, cfg: DataConfig = DataConfig()
                    ) -> pd.DataFrame:
    """All identical and near-duplicate pairs among the manifest's images (one row per pair).

    Columns: ``dataset`` (of image_a), ``image_a``, ``image_b`` (paths relative to ``root``,
    image_a < image_b), ``dataset_b``, ``kind`` (identical | near), ``phash_distance``,
    ``correlation``, ``mirrored`` (matched as a left-right flip), ``label_a``, ``label_b``,
    ``conflict`` (labels differ) and ``group`` (connected component id, 0..G-1, numbered by
    the group's first path).
    """
    _check_manifest(manifest)
    if cfg.phash_max_distance < 0 or not 0 < cfg.min_correlation <= 1:
        raise ValueError("need phash_max_distance >= 0 and 0 < min_correlation <= 1, got "
                         f"{cfg.phash_max_distance}, {cfg.min_correlation}")
    rows = manifest.sort_values("path", kind="stable").reset_index(drop=True)
    fp = fingerprint([Path(root) / p for p in rows["path"]])

    i, j, dist = candidate_pairs(fp.phash, cfg.phash_max_distance)
    same_pixels = _identical_pairs(fp.pixel_hash)
    i = np.concatenate([i, same_pixels[:, 0]])
    j = np.concatenate([j, same_pixels[:, 1]])
    dist = np.concatenate([dist, np.zeros(len(same_pixels), np.int64)])
    pairs = pd.DataFrame({"i": i, "j": j, "d": dist}).drop_duplicates(["i", "j"])
    i, j, dist = (pairs[c].to_numpy() for c in ("i", "j", "d"))

    corr_plain = np.einsum("nk,nk->n", fp.thumbs[i, 0], fp.thumbs[j, 0])
    corr_mirror = np.einsum("nk,nk->n", fp.thumbs[i, 0], fp.thumbs[j, 1])
    corr = np.maximum(corr_plain, corr_mirror)
    identical = fp.pixel_hash[i] == fp.pixel_hash[j]
    keep = identical | (corr >= cfg.min_correlation)
    i, j, dist, corr, identical = i[keep], j[keep], dist[keep], corr[keep], identical[keep]
    mirrored = ~identical & (corr_mirror[keep] > corr_plain[keep])

    out = pd.DataFrame({
        "dataset": rows["dataset"].to_numpy()[i],
        "image_a": rows["path"].to_numpy()[i],
        "image_b": rows["path"].to_numpy()[j],
        "dataset_b": rows["dataset"].to_numpy()[j],
        "kind": np.where(identical, "identical", "near"),
        "phash_distance": dist.astype(int),
        "correlation": np.where(identical, 1.0, corr).round(5),
        "mirrored": mirrored,
        "label_a": rows["label"].to_numpy()[i],
        "label_b": rows["label"].to_numpy()[j],
    }, columns=COLUMNS[:-2])
    out["conflict"] = out["label_a"] != out["label_b"]
    out["group"] = _components(out["image_a"], out["image_b"])
    return out.sort_values(["group", "image_a", "image_b"]).reset_index(drop=True)[COLUMNS]


def _identical_pairs(pixel_hash: np.ndarray) -> np.ndarray:
    """[P, 2] index pairs i < j of images with the same decoded pixels."""
    pairs = []
    for members in pd.Series(range(len(pixel_hash))).groupby(pixel_hash).groups.values():
        idx = sorted(members)
        pairs += [(a, b) for n, a in enumerate(idx) for b in idx[n + 1:]]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _components(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Connected-component id of each pair, numbered in the order of the groups' first path."""
    if len(a) == 0:
        return np.zeros(0, dtype=int)
    nodes = np.unique(np.concatenate([a.to_numpy(), b.to_numpy()]))   # sorted paths
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    graph = coo_matrix((np.ones(len(ia)), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, comp = connected_components(graph, directed=False)
    # relabel by first appearance in sorted path order -> stable ids, independent of scipy
    _, first = np.unique(comp, return_index=True)
    rank = np.empty(len(first), dtype=int)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[comp[ia]]


def duplicate_groups(duplicates: pd.DataFrame) -> pd.Series:
    """Map every image that has a duplicate to its group id (Series indexed by path)."""
    both = pd.concat([duplicates[["image_a", "group"]].set_axis(["path", "group"], axis=1),
                      duplicates[["image_b", "group"]].set_axis(["path", "group"], axis=1)])
    return both.drop_duplicates("path").set_index("path")["group"].sort_index()


def group_members(duplicates: pd.DataFrame) -> pd.DataFrame:
    """One row per group: ``group``, ``datasets`` ('busi' or 'busi+udiat'), ``paths``,
    ``labels`` (sorted, ';'-joined), ``n_images``, ``conflict`` (members' labels differ)."""
    cols = ["group", "datasets", "paths", "labels", "n_images", "conflict"]
    if duplicates.empty:
        return pd.DataFrame(columns=cols)
    long = pd.concat([
        duplicates[["group", "dataset", "image_a", "label_a"]].set_axis(
            ["group", "dataset", "path", "label"], axis=1),
        duplicates[["group", "dataset_b", "image_b", "label_b"]].set_axis(
            ["group", "dataset", "path", "label"], axis=1),
    ]).drop_duplicates("path").sort_values("path")
    per = long.groupby("group").agg(
        datasets=("dataset", lambda s: "+".join(sorted(set(s)))),
        paths=("path", ";".join),
        labels=("label", lambda s: ";".join(sorted(set(s)))),
        n_images=("path", "size"),
    ).reset_index()
    per["conflict"] = per["labels"].str.contains(";")
    return per[cols]


def summarize_duplicates(duplicates: pd.DataFrame) -> pd.DataFrame:
    """Counts per dataset (cross-dataset pairs under 'a+b'): identical pairs, near pairs,
    groups, images in groups, groups with conflicting labels."""
    pairs = duplicates.assign(datasets=[
        "+".join(sorted({a, b})) for a, b in zip(duplicates["dataset"], duplicates["dataset_b"])])
    counts = pd.crosstab(pairs["datasets"], pairs["kind"]).reindex(
        columns=["identical", "near"], fill_value=0)
    counts.columns = ["identical_pairs", "near_pairs"]
    groups = group_members(duplicates).groupby("datasets").agg(
        groups=("group", "size"), images=("n_images", "sum"),
        conflicting_groups=("conflict", "sum"))
    out = counts.join(groups, how="outer").fillna(0).astype(int)
    out.index.name = "dataset"
    return out.reset_index()


def _cache_key(manifest: pd.DataFrame, root: Path, cfg: DataConfig) -> str:
    # Content, not location: the same data under another root reuses the result.
    payload = {
        "version": _VERSION,
        "phash_max_distance": cfg.phash_max_distance,
        "min_correlation": cfg.min_correlation,
        "checksums": {d: dataset_checksum(root, d) for d in sorted(manifest["dataset"].unique())},
        "rows": hashlib.sha256("\n".join(
            f"{p}\t{lab}" for p, lab in sorted(zip(manifest["path"], manifest["label"]))
        ).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def load_duplicates(manifest: pd.DataFrame, root: str | Path, cfg: DataConfig = DataConfig()
                    ) -> pd.DataFrame:
    """:func:`find_duplicates`, cached in ``cache_dir()/duplicates`` keyed by the datasets'
    checksums, the manifest's paths and labels, and the thresholds."""
    _check_manifest(manifest)
    root = Path(root)
    path = cache_dir() / "duplicates" / f"dups-{_cache_key(manifest, root, cfg)}.csv"
    if path.exists():
        return pd.read_csv(path, dtype={"image_a": str, "image_b": str, "label_a": str,
                                        "label_b": str, "dataset": str, "dataset_b": str,
                                        "kind": str}, keep_default_na=False)
    dups = find_duplicates(manifest, root, cfg)
    with atomic_path(path) as tmp:     # a crashed run never leaves half a cache file
        dups.to_csv(tmp, index=False)
    return dups
