"""Viewers opening studies: a seeded trace with Zipf-distributed popularity (a pure leaf).

Study ``i`` (0-based) is the ``i+1``-th most popular: it is opened with probability
proportional to ``1 / (i+1) ** exponent``.  Study UIDs come from the seed too, so a
trace, the UIDs and therefore every routing decision of the hash ring are the same on
every run: the fleet measurement and the simulation replay exactly the same opens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pydicom.uid import generate_uid


@dataclass(frozen=True)
class Catalogue:
    """The studies a fleet run loads into its archive: UIDs and sizes, by popularity rank."""

    seed: int
    studies: int
    series: int
    instances: int  # per series

    def study_uid(self, rank: int) -> str:
        return str(generate_uid(entropy_srcs=[f"fleet-{self.seed}-study-{rank}"]))

    def series_uid(self, rank: int, series: int) -> str:
        return str(generate_uid(entropy_srcs=[f"fleet-{self.seed}-series-{rank}-{series}"]))

    def sop_uid(self, rank: int, series: int, number: int) -> str:
        return str(generate_uid(entropy_srcs=[f"fleet-{self.seed}-sop-{rank}-{series}-{number}"]))

    @property
    def uids(self) -> list[str]:
        return [self.study_uid(rank) for rank in range(self.studies)]


def zipf_weights(count: int, exponent: float) -> list[float]:
    return [1.0 / (rank + 1) ** exponent for rank in range(count)]


def opens(studies: int, length: int, *, exponent: float = 1.0, seed: int = 0) -> list[int]:
    """``length`` study opens (popularity ranks), drawn independently from Zipf(exponent)."""
    rng = random.Random(seed)
    return rng.choices(range(studies), weights=zipf_weights(studies, exponent), k=length)
