"""docs/nnx.md runs as printed: it builds an NNX model, trains it on
`cluttered_digits/tiny` to well above chance, reads its attention maps and converts a
Linen model."""

import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "nnx.md"


def test_nnx_doc_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
  assert len(blocks) >= 4, "docs/nnx.md lost its examples"
  namespace = {}
  exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["accuracy"] > 0.3  # chance is 0.1
