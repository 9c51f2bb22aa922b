"""The README's usage example runs as written (on the embedded engine)."""
import os
import re


def test_readme_usage_runs():
    path = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    code = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    v, att = scope["v"], scope["att"]
    assert v.cget("1.1.1/1.1.1/1.1.1")["content"] == "Hello vTPU"
    assert att.n == 512 and len(att) == 8 and att.output.shape == (64,)
