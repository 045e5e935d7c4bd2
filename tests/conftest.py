import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params() -> dict:
    """The committed quick-suite params."""
    return yaml.safe_load((REPO / "params.yaml").read_text())
