"""The README stays true: every setting and metric is documented, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from oban_pro.config import field_names
from oban_pro.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    for name in field_names():
        assert f"| `{name}` | `OBAN_{name.upper()}` |" in README, name


def test_every_metric_is_in_the_metrics_table():
    for metric in METRICS:
        name = metric[0] if isinstance(metric, tuple) else metric.name
        assert f"`{name}`" in README, name


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c).split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == test_command
