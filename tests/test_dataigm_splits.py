"""DataIGM split assignment: by group, per stratum and family, seeded."""

from __future__ import annotations

from collections import Counter

import pytest

from igmu.core.errors import ConfigError
from igmu.dataset.dataigm import assign_splits, parse_fractions


def test_fractions() -> None:
    assert parse_fractions("0.7,0.15,0.15") == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert parse_fractions("0.8,0.2") == {"train": 0.8, "test": 0.2}
    assert parse_fractions("0,0,1") == {"test": 1.0}
    for bad in ("0.7,0.2", "a,b", "1", "-0.5,1.5"):
        with pytest.raises(ConfigError):
            parse_fractions(bad)


def test_every_family_gets_its_share() -> None:
    sizes = {"unrelated/circle": 20, "unrelated/square": 20, "related/circle": 15,
             "related/square": 15}
    strata = {"concept_free": {f"{fam}#{i}": fam for fam, n in sizes.items() for i in range(n)},
              "concept": {f"forget/cross#{i}": "forget/cross" for i in range(60)}}
    fractions = parse_fractions("0.7,0.15,0.15")
    assigned = assign_splits(strata, fractions, seed=3)
    assert set(assigned) == set(strata["concept"]) | set(strata["concept_free"])
    per = Counter((key.split("#")[0], split) for key, split in assigned.items())
    assert [per[("forget/cross", s)] for s in ("train", "val", "test")] == [42, 9, 9]
    for family, n in sizes.items():
        for split, share in fractions.items():
            assert abs(per[(family, split)] - n * share) < 1  # floor or ceil of its share
    totals = Counter(split for key, split in assigned.items() if key in strata["concept_free"])
    assert totals == {"train": 49, "val": 11, "test": 10}  # largest remainder of 70
    assert assign_splits(strata, fractions, seed=3) == assigned
    assert assign_splits(strata, fractions, seed=4) != assigned
