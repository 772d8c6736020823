"""The published numbers that fedsec's experiments are compared with.

Source: Siquan Huang, Yijiang Li, Chong Chen, Leyu Shi, Ying Gao, "Multi-metrics
adaptively identifies backdoors in Federated learning", ICCV 2023, Table 1: main
accuracy (MA) and backdoor accuracy (BA), in percent, of eight aggregation rules under
four backdoor attacks on CIFAR-10 and EMNIST.

The tables are keyed by fedsec's labels: defense labels as in ``defenses/`` (``fedavg``,
``rfa``, ``foolsgold``, ``krum``, ``multi-krum``, ``weak-dp``, ``flame``,
``multi-metrics``) and attack labels ``model-replacement`` (the paper's MR), ``dba``,
``pgd`` and ``edge-case-pgd`` (EC-PGD). Sweeps that compare variants of Multi-metrics
label them ``multi-metrics-reference`` and ``multi-metrics-paper``; both map to the
paper's Multi-metrics row (:data:`DEFENSE_ALIASES`).

Use :func:`paper_cell` to look a cell up by (possibly aliased) label.
"""

from __future__ import annotations

from fedsec_core.errors import ConfigError

CITATION = (
    'Huang et al., "Multi-metrics adaptively identifies backdoors in Federated '
    'learning", ICCV 2023, Table 1'
)

DEFENSES: tuple[str, ...] = (
    "fedavg",
    "rfa",
    "foolsgold",
    "krum",
    "multi-krum",
    "weak-dp",
    "flame",
    "multi-metrics",
)
ATTACKS: tuple[str, ...] = ("model-replacement", "dba", "pgd", "edge-case-pgd")

DEFENSE_ALIASES: dict[str, str] = {
    "multi-metrics-reference": "multi-metrics",
    "multi-metrics-paper": "multi-metrics",
}

# (MA, BA) in percent; columns in the order of ATTACKS.
_CIFAR10 = {
    "fedavg": ((86.95, 64.80), (79.23, 90.44), (87.04, 14.44), (87.14, 55.10)),
    "rfa": ((86.69, 25.56), (79.60, 57.69), (87.10, 52.56), (86.47, 65.31)),
    "foolsgold": ((85.71, 6.67), (77.56, 3.43), (84.92, 14.44), (85.72, 45.41)),
    "krum": ((82.17, 6.11), (78.18, 6.01), (82.32, 66.67), (81.23, 59.18)),
    "multi-krum": ((86.55, 1.67), (79.33, 91.39), (86.52, 17.78), (87.40, 60.20)),
    "weak-dp": ((74.41, 46.11), (10.00, 0.00), (73.61, 12.78), (73.84, 53.06)),
    "flame": ((80.58, 0.56), (76.78, 37.24), (81.24, 0.56), (81.41, 5.12)),
    "multi-metrics": ((86.34, 0.56), (79.61, 9.98), (86.44, 0.56), (86.86, 3.06)),
}
_EMNIST = {
    "fedavg": ((99.54, 96.00), (97.68, 94.13), (99.55, 10.00), (99.37, 96.00)),
    "rfa": ((99.57, 6.00), (97.87, 1.39), (99.32, 4.00), (99.29, 97.00)),
    "foolsgold": ((96.42, 98.00), (97.24, 0.64), (99.07, 94.00), (99.13, 98.00)),
    "krum": ((99.22, 0.00), (97.70, 0.56), (99.12, 1.00), (99.14, 12.00)),
    "multi-krum": ((99.58, 0.00), (97.85, 47.43), (99.54, 0.00), (99.57, 84.00)),
    "weak-dp": ((99.37, 86.00), (10.00, 0.00), (99.41, 14.00), (99.39, 89.00)),
    "flame": ((99.39, 0.00), (97.12, 17.38), (99.39, 0.00), (99.44, 13.00)),
    "multi-metrics": ((99.53, 0.00), (97.39, 4.23), (99.54, 0.00), (99.58, 0.00)),
}

#: ``PAPER_TABLES[dataset][defense][attack] == (MA, BA)``, percent.
PAPER_TABLES: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    name: {d: dict(zip(ATTACKS, cells, strict=True)) for d, cells in table.items()}
    for name, table in (("cifar10", _CIFAR10), ("emnist", _EMNIST))
}


def paper_names() -> list[str]:
    """The data sets whose table is known, for ``--paper``."""
    return sorted(PAPER_TABLES)


def paper_table(name: str) -> dict[str, dict[str, tuple[float, float]]]:
    """The paper's table for data set ``name``; a ConfigError names the valid ones."""
    if name not in PAPER_TABLES:
        raise ConfigError(f"unknown paper table {name!r}; valid: {', '.join(paper_names())}")
    return PAPER_TABLES[name]


def paper_defense(label: str) -> str | None:
    """The paper's row for a defense label (aliases resolved), or None if it has none."""
    label = DEFENSE_ALIASES.get(label, label)
    return label if label in DEFENSES else None


def paper_cell(name: str, defense: str, attack: str) -> tuple[float, float] | None:
    """The paper's (MA, BA) in percent for a defense and attack label, or None if absent."""
    row = paper_defense(defense)
    if row is None:
        return None
    return paper_table(name)[row].get(attack)
