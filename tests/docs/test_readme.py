"""The README's claims stay true: its two commands exist, its results table is the committed run's."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
RESULTS = ROOT / "benchmarks" / "results" / "compare" / "results.json"


def test_readme_starts_with_the_two_make_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None and README.index(block.group(0)) < README.index("\n## ")
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make compare", "make test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("compare", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target!r}"


def _readme_rows(heading: str = "## Results of the main job") -> dict[str, list[str]]:
    start = README.index(heading)
    ends = (README.find("\n### ", start), README.find("\n**tensorpeft**", start), README.find("\n## ", start + 1))
    end = min(i for i in ends if i > 0)
    section = README[start:end]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `([\w:/-]+)` [^|]*\|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [cell.strip() for cell in m.group(2).split("|")]
    return rows


@pytest.mark.skipif(not RESULTS.exists(), reason="no committed run of the main job")
def test_readme_results_table_matches_the_committed_run():
    record = json.loads(RESULTS.read_text(encoding="utf-8"))
    readme = _readme_rows()
    assert set(readme) == {r["method"] for r in record["rows"]}
    for r in record["rows"]:
        ranks, params, accuracy, step, memory = readme[r["method"]]
        assert ranks == r["ranks"], r["method"]
        assert int(params.replace(",", "")) == r["adapter_params"], r["method"]
        assert float(accuracy) == pytest.approx(100 * r["accuracy_mean"], abs=0.051), r["method"]
        assert float(step) == pytest.approx(r["seconds_per_step"], abs=5e-4), r["method"]
        assert float(memory) == pytest.approx(r["peak_memory_mb"], abs=0.51), r["method"]
    assert record["date"][:10] in README, "the README must give the date of the run it reports"
    assert record["versions"]["torch"].split("+")[0] in README
    assert (RESULTS.parent / "accuracy_vs_params.png").exists()


LLM_RESULTS = ROOT / "benchmarks" / "results" / "compare-llm" / "results.json"


@pytest.mark.skipif(not LLM_RESULTS.exists(), reason="no committed run of the decoder job")
def test_readme_decoder_table_matches_the_committed_run():
    record = json.loads(LLM_RESULTS.read_text(encoding="utf-8"))
    readme = _readme_rows("## Results of the decoder job")
    assert set(readme) == {r["method"] for r in record["rows"]}
    for r in record["rows"]:
        ranks, params, accuracy, valid, step, memory = readme[r["method"]]
        assert ranks == r["ranks"], r["method"]
        assert int(params.replace(",", "")) == r["adapter_params"], r["method"]
        assert float(accuracy) == pytest.approx(100 * r["accuracy_mean"], abs=0.051), r["method"]
        assert float(valid) == pytest.approx(100 * r["valid_answers"][0], abs=0.051), r["method"]
        assert (
            (step == "-")
            if r["seconds_per_step"] == 0
            else float(step) == pytest.approx(r["seconds_per_step"], abs=5e-3)
        )
        assert float(memory) == pytest.approx(r["peak_memory_mb"], abs=0.51), r["method"]
    assert (LLM_RESULTS.parent / "accuracy_vs_params.png").exists()
