import copy
from pathlib import Path

import pytest
import yaml

from fixmatch_bench.report.published import PublishedError, load_published, parse_published

PUBLISHED = Path(__file__).resolve().parents[1] / "reports" / "published.yaml"


def _document() -> dict:
    return {
        "sources": {"a": "source a", "e": "source e"},
        "names": {"datasets": {"cifar10": "CIFAR-10"}, "methods": {"fixmatch_ra": "FixMatch (RA)"}},
        "results": [
            {"dataset": "cifar10", "labels": 40, "method": "fixmatch_ra", "mean": 13.81, "std": 3.37,
             "confidence": "secondary", "sources": ["a"]},
            {"dataset": "cifar10", "labels": 250, "method": "fixmatch_ra", "mean": 5.07, "std": None,
             "confidence": "unconfirmed", "sources": ["a", "e"], "note": "no std"},
        ],
        "not_retrieved": [{"method": "uda", "cells": ["cifar10_40"], "note": "not retrieved"}],
    }


def test_the_committed_file_loads_with_the_protocol_values():
    published = load_published(PUBLISHED)
    cta = published.get("cifar10_40", "fixmatch_cta")
    assert (cta.mean, cta.std, cta.confidence) == (11.39, 3.35, "secondary")
    ra = published.get("cifar10_4000", "fixmatch_ra")
    assert (ra.mean, ra.std, ra.sources) == (4.26, 0.05, ("a", "b"))
    assert published.get("svhn_40", "fixmatch_cta").std == 7.65
    da = published.get("cifar100_400", "fixmatch_cta_da")
    assert (da.mean, da.std) == (40.14, None)
    stl = published.get("stl10_1000", "fixmatch_ra")
    assert (stl.mean, stl.std, stl.sources) == (7.98, 1.50, ("d", "e"))
    assert published.get("stl10_1000", "pseudo_labeling").std is None
    # the compared methods keep only the values a citable source gives (docs/baselines_published.md §5)
    assert published.get("cifar10_40", "pi_model") is None and published.is_not_retrieved("cifar10_40", "pi_model")
    assert published.get("cifar10_250", "remixmatch") is None and published.is_not_retrieved("cifar10_250", "remixmatch")
    assert published.get("cifar10_40", "uda").sources == ("c",)
    assert published.get("stl10_1000", "remixmatch").std is None
    assert published.get("svhn_40", "uda") is None
    assert published.is_not_retrieved("svhn_40", "uda")
    assert published.names.cell("cifar100", 400) == "CIFAR-100@400"
    assert published.names.method("fixmatch_cta_da") == "FixMatch (CTA) + DA"
    # Table 2: 9 cells x (RA, CTA) + UDA 5; DA 1; STL-10 8.
    assert len(published.results) == 18 + 5 + 1 + 8


def test_our_methods_cover_every_paper_cell_of_table_2():
    published = load_published(PUBLISHED)
    cells = [f"cifar10_{n}" for n in (40, 250, 4000)] + [f"cifar100_{n}" for n in (400, 2500, 10000)] \
        + [f"svhn_{n}" for n in (40, 250, 1000)] + ["stl10_1000"]
    for cell in cells:
        for method in ("fixmatch_ra", "fixmatch_cta"):
            assert published.get(cell, method) is not None, (cell, method)


def test_a_valid_document_parses():
    published = parse_published(_document())
    assert published.get("cifar10_250", "fixmatch_ra").note == "no std"
    assert [r.cell for r in published.for_cell("cifar10_40")] == ["cifar10_40"]
    assert published.names.dataset("svhn") == "svhn"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["results"][0].pop("mean"), "results[0] (cifar10@40 fixmatch_ra): field 'mean'"),
        (lambda d: d["results"][0].update(confidence="probably"), "field 'confidence' = 'probably' is invalid; expected one of verified, secondary, unconfirmed"),
        (lambda d: d["results"][1].update(std=-0.1), "results[1] (cifar10@250 fixmatch_ra): field 'std' = -0.1"),
        (lambda d: d["results"][0].update(mean=140.0), "field 'mean' = 140.0 is invalid"),
        (lambda d: d["results"][0].update(labels=True), "field 'labels' = True"),
        (lambda d: d["results"][0].update(sources=["z"]), "field 'sources' = ['z'] is invalid"),
        (lambda d: d["results"][0].update(sources=[]), "at least one source, or a note"),
        (lambda d: d["results"][0].update(extra=1), "field 'extra' = 1"),
        (lambda d: d["results"].append(copy.deepcopy(d["results"][0])), "results[2]: field 'dataset/labels/method'"),
        (lambda d: d["not_retrieved"][0].update(method="fixmatch_ra"), "not_retrieved: field 'cells'"),
        (lambda d: d["not_retrieved"][0].update(cells=["cifar10"]), "not_retrieved[0]: field 'cells' = 'cifar10'"),
        (lambda d: d.pop("names"), "names: field '(section)'"),
    ],
)
def test_schema_errors_name_the_entry_and_field(mutate, message):
    document = _document()
    mutate(document)
    with pytest.raises(PublishedError) as error:
        parse_published(document)
    assert message in str(error.value)


def test_load_reads_yaml_from_disk(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(_document(), allow_unicode=True), encoding="utf-8")
    assert load_published(path).get("cifar10_40", "fixmatch_ra").mean == 13.81
