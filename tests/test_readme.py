"""README.md must stay true: its opening commands and its Python example."""

import re
from pathlib import Path

import pytest

from fastwavenet.demo import DEMO_MODEL

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    install_and_generate, install_and_test = blocks[0].strip(), blocks[1].strip()
    assert "pip install" in install_and_generate and "fastwavenet generate" in install_and_generate
    assert "pip install" in install_and_test and "pytest" in install_and_test
    ci = (README.parent / ".ci" / "run").read_text()
    assert install_and_test in ci, ".ci/run must run README's test command"


@pytest.mark.skipif(not DEMO_MODEL.is_file(), reason="the demo model is not bundled in this checkout")
def test_python_example_runs(capsys):
    example = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    exec(compile(example, "README.md", "exec"), {})
    assert "(1, " in capsys.readouterr().out
