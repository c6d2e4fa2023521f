"""Documentation stays true: every setting and every route is documented."""

from __future__ import annotations

from pathlib import Path

from tessera.api.routes import iter_api_routes
from tessera.app import create_app
from tessera.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TESSERA_{name.upper()}`" not in text]
    assert not missing, f"add these settings to docs/configuration.md: {missing}"


def test_every_setting_has_a_description() -> None:
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_every_route_is_documented(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 't.db'}"))
    docs = "\n".join(
        path.read_text() for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    )
    # Pages of the web UI are products, not contracts: docs/web-ui.md describes them as a whole.
    paths = {
        path
        for path, route in iter_api_routes(app.routes)
        if not route.endpoint.__module__.startswith("tessera.web.")
    }
    assert "/readyz" in paths
    paths |= set(app.state.tracking.routes)
    assert "/v1/track" in paths and "/v1/b" in paths
    missing = sorted(path for path in paths if f"`{path}`" not in docs)
    assert not missing, f"document these routes in docs/: {missing}"


def test_readme_names_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
