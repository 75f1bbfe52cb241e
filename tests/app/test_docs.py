"""The documentation's checkable details match the code: config defaults, names, links, cited tests."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import fastsess.errors
from fastsess.config import ClusterConfig

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "SECURITY.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
UNITS = {"MiB": 1024 * 1024, "KiB": 1024}


def _slugs(path: Path) -> set[str]:
    """GitHub's anchors of the headings of a Markdown file (code blocks skipped)."""
    slugs, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#+\s+(.*)", line)):
            slugs.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return slugs


def test_the_readme_lists_every_cluster_config_field_with_its_default() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("`ClusterConfig` fields and defaults")
    paragraph = text[start:text.index("\n\n", start)]
    documented = dict(re.findall(r"`(\w+)=([^`]+)`", paragraph))
    defaults = ClusterConfig()
    assert set(documented) == {f for f in ClusterConfig.__dataclass_fields__}
    for name, shown in documented.items():
        if name == "node_id":
            continue  # random per config
        number, _, unit = shown.rpartition(" ")
        value = ast.literal_eval(number) * UNITS[unit] if unit in UNITS else ast.literal_eval(shown)
        assert getattr(defaults, name) == value, (name, shown)


def test_every_env_var_the_docs_name_is_read_by_the_code() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in [*(REPO / "src").rglob("*.py"), *(REPO / "tests").rglob("*.py")])
    named = {v for doc in DOCS for v in re.findall(r"\bFASTSESS_[A-Z_]+\b", doc.read_text(encoding="utf-8"))}
    fields = {"FASTSESS_" + f.upper() for f in ClusterConfig.__dataclass_fields__}  # built by from_env
    assert sorted(v for v in named if v not in source and v not in fields) == []


def test_every_error_type_the_readme_names_exists() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for name in set(re.findall(r"`([A-Z][a-zA-Z]+(?:Error|Unavailable|Exhausted|Open|Corrupt|Large|Id|Modification))`", text)):
        if name in vars(builtins) or name in {"OutOfMemoryError", "CreateError", "UpdateError"}:
            continue  # Python's, redis-py's or Django's
        assert isinstance(getattr(fastsess.errors, name, None), type), name


def test_links_and_anchors_resolve() -> None:
    broken = []
    for doc in DOCS:
        for link in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = link.partition("#")
            target = (doc.parent / path).resolve() if path else doc
            if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _slugs(target)):
                broken.append(f"{doc.relative_to(REPO)}: {link}")
    assert broken == []


def test_cited_test_files_and_tests_exist() -> None:
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("*.py"))
    missing = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for cited in set(re.findall(r"(?:tests/)?[a-z_]+/test_[a-z0-9_]+\.py|bench/[a-z0-9_]+\.py", text)):
            if not (REPO / cited).exists() and not (REPO / "tests" / cited).exists():
                missing.append(f"{doc.name}: {cited}")
        for name in set(re.findall(r"`(test_[a-z0-9_]+)`", text)):
            if not re.search(rf"def {name}\b", tests):
                missing.append(f"{doc.name}: {name}")
    assert missing == []


def test_security_md_points_nowhere_outside_the_repository() -> None:
    text = (REPO / "SECURITY.md").read_text(encoding="utf-8")
    assert [n for n in ("DESIGN" + ".md", "STYLE" + ".md", "../" + "shared") if n in text] == []
