import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
REPO = Path(__file__).resolve().parents[1]


def digits_workspace(root: Path, train: dict) -> tuple[Path, dict]:
    """Prepared digits and the fold-1 split of 20 labels, as the pipeline makes them, plus the
    committed params with ``train`` overrides (also written to ``root/params.yaml``)."""
    from fixmatch_bench.digits import digits_arrays
    from fixmatch_bench.download import fetch, load_sources
    from fixmatch_bench.prepared import load_prepared, save_prepared
    from fixmatch_bench.splits import make_split, write_split

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    fetch(load_sources(REPO / "params.yaml").files("digits")[0], root / "raw")
    facts = params["datasets"]["digits"]
    save_prepared(root / "prepared/digits", "digits", 10,
                  digits_arrays(root / "raw", facts["image_size"], facts["test_size"]))
    write_split(make_split(load_prepared(root / "prepared/digits"), 20, 1), root / "splits/digits_20-1.json")
    params["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root, params


@pytest.fixture
def params() -> dict:
    """The committed quick-suite params."""
    return yaml.safe_load((REPO / "params.yaml").read_text())
