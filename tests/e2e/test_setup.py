"""The fresh-machine set-up behind `make demo` and `make test`: system packages from apt
(scripts/ensure-apt), the Terraform provider on disk (scripts/tf-plugin-dir), and which
targets need which."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]
ENSURE_APT = ROOT / "scripts" / "ensure-apt"
TF_PLUGIN_DIR = ROOT / "scripts" / "tf-plugin-dir"
MISSING = "ancsync-test-no-such-package=ancsync-test-no-such-command"


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, env={**os.environ, **env}, check=False
    )


def test_ensure_apt_is_silent_when_everything_is_installed() -> None:
    result = run([str(ENSURE_APT), "coreutils=ls", "bash"])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_ensure_apt_names_the_package_and_the_command_when_it_may_not_install() -> None:
    result = run([str(ENSURE_APT), "bash", MISSING], ENSURE_APT_INSTALL="no")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: missing system packages: ancsync-test-no-such-package (ENSURE_APT_INSTALL=no); "
        "run: sudo apt-get install -y ancsync-test-no-such-package"
    ]


def fake_commands(directory: Path, **scripts: str) -> str:
    """A PATH whose first directory holds the given shell commands (name: body)."""
    directory.mkdir()
    for name, body in scripts.items():
        command = directory / name
        command.write_text(f"#!/bin/sh\n{body}\n")
        command.chmod(0o755)
    return f"{directory}:/usr/bin:/bin"


def test_ensure_apt_as_a_user_who_may_not_run_apt_stops_at_once(tmp_path: Path) -> None:
    # A user who is not root and whose sudo asks for a password (sudo -n fails); apt-get is
    # there but must not be run.
    path = fake_commands(
        tmp_path / "bin",
        id="echo 1000",
        sudo="exit 1",
        **{"apt-get": "echo apt-get ran >&2; exit 3"},
    )
    result = run(["bash", str(ENSURE_APT), MISSING], PATH=path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: missing system packages: ancsync-test-no-such-package (this user may not run "
        "apt-get); run: sudo apt-get install -y ancsync-test-no-such-package"
    ]


def fake_provider(directory: Path) -> Path:
    """A plugin directory in Terraform's layout, holding an (empty) AWS provider binary."""
    binary = directory / "registry.terraform.io/hashicorp/aws/5.0.0/linux_amd64"
    binary.mkdir(parents=True)
    (binary / "terraform-provider-aws_v5.0.0_x5").touch()
    return directory


def test_tf_plugin_dir_takes_the_filesystem_mirror_of_the_cli_configuration(
    tmp_path: Path,
) -> None:
    mirror = fake_provider(tmp_path / "mirror")
    config = tmp_path / "terraform.rc"
    config.write_text(
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f'    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/*/*"]\n'
        "  }\n"
        "}\n"
    )
    result = run([str(TF_PLUGIN_DIR)], TF_CLI_CONFIG_FILE=str(config), HOME=str(tmp_path))
    assert (result.returncode, result.stdout) == (0, f"{mirror}\n")


def test_tf_plugin_dir_looks_in_the_user_plugin_directory(tmp_path: Path) -> None:
    plugins = fake_provider(tmp_path / ".terraform.d" / "plugins")
    result = run([str(TF_PLUGIN_DIR)], TF_CLI_CONFIG_FILE="/nonexistent", HOME=str(tmp_path))
    assert result.stdout == f"{plugins}\n"


def test_tf_plugin_dir_skips_a_directory_without_the_provider(tmp_path: Path) -> None:
    (tmp_path / ".terraform.d" / "plugins" / "registry.terraform.io").mkdir(parents=True)
    plugins = fake_provider(tmp_path / "share" / "terraform" / "plugins")
    result = run(
        [str(TF_PLUGIN_DIR)],
        TF_CLI_CONFIG_FILE="/nonexistent",
        HOME=str(tmp_path),
        XDG_DATA_HOME=str(tmp_path / "share"),
    )
    assert result.stdout == f"{plugins}\n"


def test_the_demo_installs_only_what_it_needs_and_the_tests_the_rest() -> None:
    demo = run(["make", "-n", "-C", str(ROOT), "demo"])
    assert demo.returncode == 0, demo.stderr
    for not_needed in ("[dev", "ensure-apt", "tf-plugin-dir"):
        assert not_needed not in demo.stdout
    tests = run(["make", "-n", "-C", str(ROOT), "-W", "pyproject.toml", "test"])
    assert "scripts/ensure-apt mosquitto mosquitto-clients=mosquitto_sub" in tests.stdout
    assert 'pip install -q -e ".[dev,aws]"' in tests.stdout
    assert "TF_PLUGIN_DIR=" in tests.stdout
