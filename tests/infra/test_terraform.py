"""`terraform init`, `validate`, `fmt -check` and `terraform test` on infra/terraform.

There is no Terraform registry in CI: `make test` points ``TF_PLUGIN_DIR`` at the AWS provider on
disk (found once by scripts/tf-plugin-dir), and init uses it; without the variable a plain
``terraform init`` (registry) is used.
Terraform runs in a copy of the repository layout under tmp_path, so no ``.terraform`` directory
or lock file is left in the working tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The policy templates Terraform shares with the emulator (device and claim policies).
POLICY_TEMPLATES = sorted((REPO / "src" / "ancsync" / "emulator").glob("*.json.tpl"))


TERRAFORM_DIR = REPO / "infra" / "terraform"

NO_TERRAFORM = shutil.which("terraform") is None
if NO_TERRAFORM:
    print("SKIP tests/infra/test_terraform.py: terraform is not installed")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        NO_TERRAFORM,
        reason="terraform is not installed (https://developer.hashicorp.com/terraform/install)",
    ),
]


def terraform(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
    return subprocess.run(
        ["terraform", *args, "-no-color"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of infra/terraform (and the policy templates it reads), initialised offline."""
    root = tmp_path_factory.mktemp("tf")
    module = root / "infra" / "terraform"
    shutil.copytree(
        TERRAFORM_DIR, module, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*")
    )
    for template in POLICY_TEMPLATES:
        copy = root / template.relative_to(REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, copy)

    init = ["init", "-backend=false", "-input=false"]
    plugin_dir = os.environ.get("TF_PLUGIN_DIR")
    if plugin_dir:
        init.append(f"-plugin-dir={plugin_dir}")
    check(terraform(*init, cwd=module))
    return module


def test_validate(initialised: Path) -> None:
    result = terraform("validate", cwd=initialised)
    check(result)
    assert "configuration is valid" in result.stdout


def test_fmt_check() -> None:
    # Run on the repository itself: fmt -check writes nothing.
    check(terraform("fmt", "-check", "-recursive", cwd=TERRAFORM_DIR))


def test_mocked_plan_assertions(initialised: Path) -> None:
    # infra/terraform/tests/plan.tftest.hcl: the whole module planned against a mocked provider.
    result = terraform("test", cwd=initialised)
    check(result)
    assert "2 passed, 0 failed" in result.stdout
