"""Every setting is documented in README's one settings table (the same names drive compose, k8s and `up`)."""

from pathlib import Path

from shared.state.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table():
    table = [line for line in README.splitlines() if line.startswith("| `")]
    documented = " ".join(table)
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in documented]
    assert not missing, f"settings missing from README's table: {missing}"
