"""The ``vitrine`` command, driven through typer's runner."""

import json
import logging
import re
from pathlib import Path

from typer.testing import CliRunner

from conftest import draw_product, write_jsonl
from vitrine.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_ingest_index_search_eval(tmp_path: Path, catalog_file: Path):
    store = tmp_path / "store"
    result = run("ingest", store, catalog_file)
    assert result.exit_code == 0, result.output
    assert "4 added" in result.output

    result = run("index", store)
    assert result.exit_code == 0, result.output
    assert "indexed 4 products" in result.output

    result = run("search", store, "--text", "coffee mug", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert hits[0]["id"] == "mug" and len(hits) == 2

    photo = draw_product(tmp_path / "photo.png", "triangle", (240, 130, 30), size=220)
    result = run("search", store, "--image", photo)
    assert result.exit_code == 0, result.output
    first_row = next(line for line in result.output.splitlines() if line.lstrip("│ ").startswith("1 "))
    assert "cone" in first_row

    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"text": "warm scarf", "relevant": {"scarf": 1}},
        {"image": "photo.png", "relevant": {"cone": 2}},
    ])
    result = run("eval", store, queries)
    assert result.exit_code == 0, result.output
    assert "recall@1" in result.output
    report = json.loads(next((store / "reports").glob("eval-q-*.json")).read_text())
    assert report["queries"] == 2 and report["metrics"]["recall@1"] == 1.0
    assert report["per_query"][0]["ranked"][0] == "scarf"


def test_compare_two_eval_reports(built_store: Path, tmp_path: Path):
    import shutil

    store = shutil.copytree(built_store, tmp_path / "store")  # eval writes reports into the store
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"text": "warm scarf", "relevant": {"scarf": 1}},
        {"text": "coffee mug", "relevant": {"mug": 1}},
        {"text": "something for the road", "relevant": {"cone": 1}},
    ])
    reports = []
    for name, extra in (("plain", []), ("lexical", ["--lexical"])):
        assert run("eval", store, queries, "--name", name, *extra).exit_code == 0
        reports.append(next((store / "reports").glob(f"eval-{name}-*.json")))
    result = run("compare", *reports, "--metric", "mrr")
    assert result.exit_code == 0, result.output
    a, b = (json.loads(path.read_text())["metrics"]["mrr"] for path in reports)
    row = next(line for line in result.output.splitlines() if "mrr" in line)
    assert f"{a:.4f}" in row and f"{b:.4f}" in row and f"{b - a:+.4f}" in row and "3 queries" in result.output
    result = run("compare", reports[0], queries)
    assert result.exit_code == 2 and "not a JSON report" in result.output and "Traceback" not in result.output


def test_eval_names_what_was_ranked_first_instead(built_store: Path, tmp_path: Path):
    import shutil

    store = shutil.copytree(built_store, tmp_path / "store")
    queries = write_jsonl(tmp_path / "q.jsonl", [  # labelled as if a scarf search wanted the mug
        {"text": "warm scarf", "relevant": {"mug": 1}},
        {"text": "warm knitted scarf", "relevant": {"mug": 1}},
        {"text": "coffee mug", "relevant": {"mug": 1}},
    ])
    result = run("eval", store, queries)
    assert result.exit_code == 0, result.output
    assert "2: Blue Coffee Mug (mug) -> Striped Wool Scarf (scarf)" in result.output
    report = json.loads(next((store / "reports").glob("eval-q-*.json")).read_text())
    assert report["confusions"] == [{"wanted": "mug", "given": "scarf", "queries": 2, "wanted_title": "Blue Coffee Mug",
                                     "given_title": "Striped Wool Scarf"}]
    markdown = next((store / "reports").glob("eval-q-*.md")).read_text()
    assert "| Blue Coffee Mug (mug) | 3 | 1 | Striped Wool Scarf (scarf) |" in markdown


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path):
    source = tmp_path / "p.jsonl"
    source.write_text('{"id": "a", "title": "A", "images": ["gone.png"]}\n')
    result = run("ingest", tmp_path / "store", source)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and f"{source}:1" in lines[0].replace("\n", "")


def test_skip_bad_reports_counts(tmp_path: Path):
    source = tmp_path / "p.jsonl"
    source.write_text('{"id": "a", "title": "A"}\n{oops\n')
    result = run("ingest", tmp_path / "store", source, "--skip-bad")
    assert result.exit_code == 0
    assert "1 added" in result.output and "1 skipped" in result.output
    assert (tmp_path / "store" / "reports" / "ingest-skipped.json").is_file()


def test_user_errors_exit_2(tmp_path: Path):
    for args in (("search", tmp_path / "nowhere", "--text", "x"),
                 ("index", tmp_path / "nowhere"),
                 ("ingest", tmp_path / "store", tmp_path / "missing.jsonl")):
        result = run(*args)
        assert result.exit_code == 2, args
        assert result.output.startswith("error:") and "Traceback" not in result.output


def test_search_needs_a_query(built_store: Path):
    result = run("search", built_store)
    assert result.exit_code == 2 and "give --text, --image, or both" in result.output


def test_search_with_convex_fusion_and_a_bad_fusion(built_store: Path):
    result = run("search", built_store, "--text", "coffee mug", "--lexical", "--fusion", "convex", "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert hits[0]["id"] == "mug" and all(0.0 <= hit["score"] <= 1.0 for hit in hits)
    result = run("search", built_store, "--text", "coffee mug", "--lexical", "--fusion", "mean")
    assert result.exit_code == 2 and "unknown search.fusion 'mean'" in result.output and "Traceback" not in result.output


def test_quiet_unless_verbose(built_store: Path, caplog):
    caplog.set_level(logging.DEBUG)
    result = run("search", built_store, "--text", "coffee mug", "--lexical", "-k", "2")
    assert result.exit_code == 0, result.output
    chatter = [r for r in caplog.records if r.levelno < logging.WARNING and r.name.startswith("bm25s")]
    assert not chatter, [r.getMessage() for r in chatter]  # bm25s sets its own logger to DEBUG


def test_a_fresh_process_stays_quiet_too(built_store: Path):
    """In its own process the CLI imports bm25s after setting up logging, and bm25s then sets its logger to DEBUG
    again on import: its chatter must still not reach the terminal."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from vitrine.cli import main; main()", "search", str(built_store),
                           "--text", "coffee mug", "--lexical", "-k", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mug" in done.stdout and "DEBUG" not in done.stderr + done.stdout


def test_set_keeps_settings_in_the_store(built_store: Path, tmp_path: Path):
    import shutil

    store = tmp_path / "s"
    shutil.copytree(built_store, store)
    result = run("index", store, "--set", "index.factory=HNSW16")
    assert result.exit_code == 0, result.output
    assert "HNSW16" in result.output
    assert 'factory = "HNSW16"' in (store / "config.toml").read_text()
    assert json.loads(run("info", store).output)["index"]["factory"] == "HNSW16"


def test_help_explains_commands():
    result = run("--help")
    for command in ("ingest", "index", "search", "eval", "demo"):
        assert command in result.output


def test_command_help_flows_as_paragraphs():
    # Rich keeps a docstring's line breaks; at 80 columns they left half-empty lines mid-sentence.
    result = runner.invoke(app, ["train", "--help"], terminal_width=80)
    assert result.exit_code == 0
    prose = [line.strip() for line in result.output.splitlines() if "│" not in line]
    first = next(i for i, line in enumerate(prose) if line.startswith("Negatives come from the batch"))
    paragraph = prose[first:prose.index("", first)]
    assert len(paragraph) >= 5 and all(len(line) >= 50 for line in paragraph[:-1])  # no lines cut short mid-sentence
    assert prose[first + len(paragraph) + 1].startswith("--objective prototype --stages 1,2,3")  # paragraphs kept


def test_demo_builds_a_store_with_both_channels(tmp_path: Path):
    from test_loaders import make_grocery

    dataset = make_grocery(tmp_path / "grocery")
    train = []
    drawn = (("Granny-Smith", "circle", (80, 200, 60), 0), ("Oat-Milk", "square", (230, 230, 200), 1))
    for name, shape, colour, fine in drawn:
        for i in range(3):
            draw_product(dataset / "train" / f"{name}_{i}.jpg", shape, colour, size=150 + 20 * i,
                         background=(120, 90, 60))
            train.append(f"train/{name}_{i}.jpg, {fine}, {fine}")
    (dataset / "train.txt").write_text("\n".join(train) + "\n")
    store = tmp_path / "demo"
    result = run("demo", "--store", store, "--data", tmp_path / "grocery", "--no-serve")
    assert result.exit_code == 0, result.output
    assert "vector search:" in result.output and "ID recognition (prototype channel):" in result.output
    assert "vector search, the top 50 reranked by hybrid:" in result.output
    assert {re.sub(r"-\d{8}-\d{6}$", "", path.stem) for path in (store / "reports").glob("*.json")} == {
        "eval-grocery-val-vector", "eval-grocery-val-prototype", "eval-grocery-val-vector-hybrid"}
    models = json.loads(run("info", store).output)["models"]
    assert models["default"]["objective"] == "prototype" and models["default"]["stages"] == "1,2"
    assert models["default"]["in_use"] and models["rerank"]["in_use"]
    from vitrine.catalog import Store

    assert models["default"]["products"] == len(Store.open(store).catalog) > 0
