"""What each dataset is, where it comes from, under which licence, and what its paper counts.

The published counts are the yardstick for ``bus-paper data check``: a copy that does not
reproduce them is incomplete or not the dataset the paper used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DatasetInfo:
    name: str                  # short key used everywhere (manifest `dataset` column, CLI, configs)
    folder: str                # the dataset's folder under the data root
    layout: str                # sub-path that must exist (the original archive's top folder)
    title: str
    citation: str
    doi: str
    url: str                   # where the public copy can be obtained
    licence: str
    modality: str = "ultrasound"
    counts: dict[str, int] = field(default_factory=dict)  # published images per label
    patients: int | None = None  # published number of patients (None: not given)

    @property
    def images(self) -> int:
        return sum(self.counts.values())

    def source(self) -> str:
        """One line saying where to get the data, for error messages."""
        doi = f", doi:{self.doi}" if self.doi else ""
        return f"{self.title}: {self.url} (cite {self.citation}{doi}; licence: {self.licence})"


DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo(
        name="busi", folder="busi", layout="busi/Dataset_BUSI_with_GT",
        title="BUSI (Breast Ultrasound Images Dataset, Baheya Hospital, Cairo)",
        citation="Al-Dhabyani et al., Data in Brief 28:104863 (2020)",
        doi="10.1016/j.dib.2019.104863",
        url="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset (mirrored on Kaggle: "
            "aryashah2k/breast-ultrasound-images-dataset; Mendeley Data)",
        licence="CC0 1.0 as distributed on Kaggle (paper CC BY)",
        counts={"benign": 437, "malignant": 210, "normal": 133}, patients=None),
    DatasetInfo(
        name="udiat", folder="udiat", layout="udiat/BUS",
        title="UDIAT Dataset B (UDIAT Diagnostic Centre, Parc Tauli, Sabadell)",
        citation="Yap et al., IEEE J. Biomed. Health Inform. 22(4):1218-1226 (2018)",
        doi="10.1109/JBHI.2017.2731873",
        url="on request from the authors (Manchester Metropolitan University; see the paper)",
        licence="research use under the authors' agreement; not an open licence",
        counts={"benign": 109, "malignant": 54}, patients=None),
    DatasetInfo(
        name="busbra", folder="busbra", layout="busbra/BUSBRA",
        title="BUS-BRA (Brazilian breast ultrasound dataset)",
        citation="Gomez-Flores et al., Medical Physics 51(4):3110-3123 (2024), "
                 "doi:10.1002/mp.16812",
        doi="10.5281/zenodo.7730709",
        url="https://doi.org/10.5281/zenodo.7730709 (Zenodo)",
        licence="CC BY 4.0 (Zenodo record); LICENSE.txt asks to cite the paper",
        counts={"benign": 1268, "malignant": 607}, patients=1064),
    DatasetInfo(
        name="busuclm", folder="busuclm", layout="busuclm/BUS-UCLM",
        title="BUS-UCLM (breast ultrasound lesion segmentation dataset, Ciudad Real)",
        citation="Vallez et al., Scientific Data 12:242 (2025)",
        doi="10.1038/s41597-025-04562-3",
        url="https://data.mendeley.com/datasets/7fvgj4jsp7 (Mendeley Data)",
        licence="unclear (CC BY 4.0 or CC BY-NC 4.0); assume CC BY-NC 4.0",
        counts={"benign": 174, "malignant": 90, "normal": 419}, patients=38),
    DatasetInfo(
        name="mias", folder="mias", layout="mias/all-mias",
        title="mini-MIAS (MIAS MiniMammographic Database)",
        citation="Suckling et al., Excerpta Medica Int. Congress Series 1069:375-378 (1994)",
        doi="",
        url="http://peipa.essex.ac.uk/info/mias.html (mirror: mammoimage.org/databases)",
        licence="MIAS licence agreement: research use only",
        modality="mammography",
        # one image (mdb144) has a benign and a malignant lesion; it is counted in neither here
        counts={"normal": 207, "benign": 63, "malignant": 51}, patients=161),
]}

# The four ultrasound datasets with adapters, in the order tables list them.
BUS_DATASETS: tuple[str, ...] = ("busi", "udiat", "busbra", "busuclm")


class DatasetNotFound(FileNotFoundError):
    """A dataset is missing (or incomplete) under the data root; says where we looked and where
    the data can be obtained."""

    def __init__(self, name: str, looked_at: Sequence[str | os.PathLike], detail: str = ""):
        self.name = name
        self.looked_at = [Path(p) for p in looked_at]
        info = DATASETS.get(name)
        where = ", ".join(str(p) for p in self.looked_at) or "(no candidate)"
        layout = info.layout if info else name
        msg = f"dataset {name!r} not found: looked for {layout}/ under {where}."
        if detail:
            msg += f" {detail}."
        if info:
            msg += f" Public source: {info.source()}."
        msg += " Set BUS_PAPER_DATA to the folder that holds it."
        super().__init__(msg)


def get_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``, with a helpful error for a typo."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
