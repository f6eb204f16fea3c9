"""Published results quoted from the EL-DARTS paper (Tables 1, 2 and 3), as data.

These figures were *reported by their authors*, not measured by eldarts;
every row carries ``published=True`` and the paper's citation number, and
anything that renders them beside a measured run must mark them as
published. The text of the paper was OCR'd, which dropped decimal points and
joined cells; these readings restore them: ``33`` -> 3.3, ``2,51`` -> 2.51,
``28402`` -> 2.84 +- 0.2, Bandit-NAS ``294 34`` -> 2.94 and 3.4, P-DARTS ``34``
-> 3.4 (and ``49`` -> 4.9 on ImageNet), IS-DARTS ``24`` -> 2.4, Table 3 ``292``
-> 2.92, and DARTS (first order)'s search cost ``15`` -> 1.5 GPU-days (DARTS'
own paper gives 1.5 for first order, 4 for second).

``zoo`` names the genotype in ``eldarts_cli.genotypes.GENOTYPES`` that
reproduces the architecture, where there is one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

PAPER = "EL-DARTS (paper text in shared/paper/el-darts.txt)"


@dataclass(frozen=True)
class PublishedRow:
    """One row of a results table, as printed in the paper."""

    architecture: str
    top1_error: Optional[float]  # test error, %
    top1_error_std: Optional[float] = None
    top5_error: Optional[float] = None  # ImageNet only
    params_m: Optional[float] = None
    macs_m: Optional[float] = None  # ImageNet only, 224x224, as reported by the cited paper
    search_cost_gpu_days: Optional[float] = None
    num_ops: Optional[int] = None
    method: str = ""
    citation: str = ""  # the paper's reference number, e.g. "[16]"
    zoo: Optional[str] = None
    params_approx: bool = False  # printed as "~5"
    error_text: Optional[str] = None  # the error as printed where not with two decimals (Table 1) or one (Table 2)
    published: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


#: Table 1, CIFAR-10 (test error %, params M, search cost GPU-days, #ops, method).
TABLE1_CIFAR10: tuple[PublishedRow, ...] = (
    PublishedRow("DenseNet-BC", 3.46, params_m=25.6, method="manual", citation="[35]"),
    PublishedRow("NASNet-A", 2.83, params_m=3.1, search_cost_gpu_days=2000, num_ops=13, method="RL", citation="[15]"),
    PublishedRow("BlockQNN", 3.54, params_m=39.8, search_cost_gpu_days=96, num_ops=8, method="RL", citation="[10]"),
    PublishedRow("Bandit-NAS", 2.94, params_m=3.4, search_cost_gpu_days=0.3, num_ops=6, method="RL", citation="[36]"),
    PublishedRow("ENAS", 2.89, params_m=4.6, search_cost_gpu_days=0.5, num_ops=6, method="RL", citation="[37]"),
    PublishedRow("AmoebaNet-A", 3.12, params_m=3.1, search_cost_gpu_days=3150, num_ops=19, method="evolution", citation="[13]"),
    PublishedRow("Hierarchical evolution", 3.75, 0.12, params_m=15.7, search_cost_gpu_days=300, num_ops=6, method="evolution", citation="[38]"),
    PublishedRow("DARTS_V1", 3.00, 0.14, params_m=3.3, search_cost_gpu_days=1.5, num_ops=8, method="gradient", citation="[16]", zoo="DARTS_V1"),
    PublishedRow("DARTS_V2", 2.76, 0.09, params_m=3.3, search_cost_gpu_days=4, num_ops=8, method="gradient", citation="[16]", zoo="DARTS_V2"),
    PublishedRow("P-DARTS", 2.50, params_m=3.4, search_cost_gpu_days=0.3, num_ops=8, method="gradient", citation="[39]", zoo="P_DARTS"),
    PublishedRow("PC-DARTS", 2.57, params_m=3.6, search_cost_gpu_days=0.1, num_ops=8, method="gradient", citation="[26]", zoo="PC_DARTS"),
    PublishedRow("SWD-NAS", 2.51, params_m=3.17, search_cost_gpu_days=0.13, num_ops=8, method="gradient", citation="[40]"),
    PublishedRow("IS-DARTS", 2.4, error_text="2.4", params_m=4.47, search_cost_gpu_days=0.42, num_ops=8, method="gradient", citation="[19]"),
    PublishedRow("EL-DARTS", 2.47, params_m=3.1, search_cost_gpu_days=0.075, num_ops=4, method="gradient"),
)

#: Table 2, ImageNet mobile setting (top-1/top-5 error %, params M, MACs M, search cost, method).
TABLE2_IMAGENET: tuple[PublishedRow, ...] = (
    PublishedRow("MobileNet", 29.4, top5_error=10.5, params_m=4.2, macs_m=569, method="manual", citation="[41]"),
    PublishedRow("ShuffleNet 2x (g=3)", 26.3, params_m=5, params_approx=True, macs_m=524, method="manual", citation="[42]"),
    PublishedRow("NASNet-A", 26.0, top5_error=8.4, params_m=5.3, macs_m=564, search_cost_gpu_days=2000, method="RL", citation="[15]"),
    PublishedRow("NASNet-B", 27.2, top5_error=8.7, params_m=5.3, macs_m=488, search_cost_gpu_days=2000, method="RL", citation="[15]"),
    PublishedRow("AmoebaNet-A", 25.5, top5_error=8.0, params_m=5.1, macs_m=555, search_cost_gpu_days=3150, method="evolution", citation="[13]"),
    PublishedRow("AmoebaNet-B", 26.0, top5_error=8.5, params_m=5.3, macs_m=555, search_cost_gpu_days=3150, method="evolution", citation="[13]"),
    PublishedRow("P-DARTS (CIFAR-10)", 24.4, top5_error=7.4, params_m=4.9, macs_m=557, search_cost_gpu_days=0.3, method="gradient", citation="[39]", zoo="P_DARTS"),
    PublishedRow("PC-DARTS (CIFAR-10)", 25.1, top5_error=7.8, params_m=5.3, macs_m=586, search_cost_gpu_days=0.1, method="gradient", citation="[26]", zoo="PC_DARTS"),
    PublishedRow("DARTS", 26.7, top5_error=8.7, params_m=4.7, macs_m=574, search_cost_gpu_days=4.0, method="gradient", citation="[16]", zoo="DARTS_V2"),
    PublishedRow("EL-DARTS", 26.2, top5_error=8.0, params_m=4.5, macs_m=582, search_cost_gpu_days=0.075, method="gradient"),
)


@dataclass(frozen=True)
class AblationRow:
    """Table 3: which EL-DARTS components are on, and the CIFAR-10 result (3 runs)."""

    ess: bool  # A: efficient search space
    dcss: bool  # B: dynamic coefficient scheduling
    entropy: bool  # C: entropy regularisation
    top1_error: float
    top1_error_std: float
    search_cost_gpu_days: float
    error_text: str = ""  # as printed: the paper gives its means and stds with one or two decimals
    published: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


#: Table 3, ablation on CIFAR-10 (test error mean +- std over 3 runs, search cost GPU-days).
TABLE3_ABLATION: tuple[AblationRow, ...] = (
    AblationRow(False, False, False, 2.92, 0.21, 0.1, "2.92 ± 0.21"),
    AblationRow(True, True, False, 2.64, 0.2, 0.075, "2.64 ± 0.2"),
    AblationRow(True, False, True, 2.73, 0.18, 0.075, "2.73 ± 0.18"),
    AblationRow(False, True, True, 2.84, 0.2, 0.1, "2.84 ± 0.2"),
    AblationRow(True, True, True, 2.6, 0.13, 0.075, "2.6 ± 0.13"),
)

TABLES = {"cifar10": TABLE1_CIFAR10, "imagenet": TABLE2_IMAGENET}

#: The ImageNet mobile setting (paper section 3.3): fewer than 600M multiply-adds at 224x224.
MOBILE_MACS_LIMIT_M = 600.0
#: Table 2's setting: ImageNet's 1,000 classes at 224x224.
IMAGENET_CLASSES, IMAGENET_SIZE = 1000, 224


def is_table2_setting(network: str, num_classes: int, size: int) -> bool:
    """Whether a run is comparable with Table 2: an ImageNet network on 1,000 classes at 224x224."""
    return network == "imagenet" and num_classes == IMAGENET_CLASSES and size == IMAGENET_SIZE


def format_error(mean: Optional[float], std: Optional[float] = None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


@dataclass(frozen=True)
class NB201Row:
    """A NAS-Bench-201 CIFAR-10 result as published (accuracy %, the benchmark's 200-epoch training)."""

    method: str
    valid_acc: Optional[float]
    test_acc: float
    test_acc_std: Optional[float] = None
    arch: Optional[str] = None
    published: bool = True


#: NAS-Bench-201 (Dong & Yang, ICLR 2020) Table 5, CIFAR-10, as later papers reproduce it (e.g. the
#: NAS-Bench-201 comparison table of "From One to Zero: Causal Zero-Shot NAS"). DARTS' cell is all
#: skip_connect (NAS-Bench-201's own documentation). Not measured by eldarts.
NB201_CIFAR10: tuple[NB201Row, ...] = (
    NB201Row("ResNet (hand-designed)", 90.83, 93.97),
    NB201Row("optimal cell of the benchmark", 91.61, 94.37),
    NB201Row("DARTS, first order", 39.77, 54.30, 0.0,
             "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"),
    NB201Row("DARTS, second order", 39.77, 54.30, 0.0),
)
