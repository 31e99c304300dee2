"""The Vagrantfile is valid and provisions through the one set-up script."""

from __future__ import annotations

import subprocess

import pytest
from lab_helpers import ROOT


@pytest.mark.needs("vagrant")
def test_vagrant_validate_passes() -> None:
    out = subprocess.run(
        ["vagrant", "validate"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validated successfully" in out.stdout


def test_vagrantfile_pins_box_and_uses_provision_script() -> None:
    """A pinned box version and the same provision script as bare machines and CI."""
    text = (ROOT / "Vagrantfile").read_text()
    assert 'config.vm.box = "bento/debian-12"' in text
    assert "config.vm.box_version = " in text
    # In place in the synced folder: a `path:` script is uploaded alone to /tmp.
    assert 'inline: "bash /vagrant/scripts/provision.sh"' in text
    assert 'config.vm.synced_folder ".", "/vagrant"' in text
