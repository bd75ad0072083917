"""The README's usage example runs as printed."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "README.md has no python example"
  for block in blocks:
    exec(compile(block, str(README), "exec"), {})  # pylint: disable=exec-used


def test_ci_runs_the_readme_test_command():
  readme = README.read_text()
  ci = (README.parent / ".ci" / "run").read_text()
  install_and_test = re.search(r"pip install -e \"\.\[all\]\" && (pytest[^\n]*)", readme)
  assert install_and_test, "README names no install+test command"
  assert 'pip install -q -e ".[all]"' in ci and install_and_test.group(1) in ci
