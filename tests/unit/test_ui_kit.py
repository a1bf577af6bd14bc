"""The dashboard kit (ui/): every `ui.<name>` a page or app.py calls is one the kit exports."""
import ast

from conftest import REPO

import ui


def names_called(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ui"}


def test_the_pages_call_only_what_the_kit_exports():
    scripts = [REPO / "app.py", *sorted((REPO / "views").glob("*.py"))]
    called = {script.name: names_called(script) for script in scripts}
    assert called["app.py"] and called["signin.py"]   # the walk finds calls at all
    missing = {name: sorted(names - set(ui.__all__)) for name, names in called.items() if names - set(ui.__all__)}
    assert missing == {}
    assert all(hasattr(ui, name) for name in ui.__all__)
