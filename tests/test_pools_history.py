"""An Alpaca row's `history` (LLaMA-Factory's field: [user, assistant] pairs before the instruction)
is read as the earlier turns of the conversation, so a `select --format alpaca` export of a
multi-turn pool reads back as the same examples; a malformed `history` is refused in one line."""

import json

import pytest
from typer.testing import CliRunner

from conftest import finetune_run, multi_turn_sharegpt
from raise_select.cli.main import app
from raise_select.data.pools import load_pool, subsample_to_file
from raise_select.errors import UserError

runner = CliRunner()


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["chosen.jsonl", "chosen.json"])
def test_an_alpaca_export_of_a_multi_turn_pool_reads_back_as_the_same_examples(tmp_path, name):
    multi_turn_sharegpt(tmp_path / "pool.json")
    run, pool = finetune_run(tmp_path, tmp_path / "pool.json", [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
    result = runner.invoke(app, ["select", "--run", str(run), "--out", str(tmp_path / name), "--format", "alpaca"])
    assert result.exit_code == 0, result.output
    assert "8 of the 12 are multi-turn" in result.output

    back = load_pool(tmp_path / name)
    assert back.format == "alpaca"
    assert [e.messages for e in back.examples] == [e.messages for e in pool.examples]
    assert back.ids == pool.ids  # the same content hashes: a selection of one names rows of the other
    # spelled out for row 0: system, the two earlier exchanges, then the last question and answer
    assert back.examples[0].messages == (
        ("system", "sys 0"),
        ("user", "q0.0"),
        ("assistant", "a0.0"),
        ("user", "q0.1"),
        ("assistant", "a0.1"),
        ("user", "last question 0"),
        ("assistant", "last answer 0"),
    )


def test_history_comes_between_the_system_prompt_and_the_instruction_with_its_input(tmp_path):
    row = {
        "system": "be brief",
        "history": [["hi", "hello"], ["what is 1+1?", "2"]],
        "instruction": "and times 3?",
        "input": "(of that)",
        "output": "6",
    }
    (ex,) = load_pool(_write_jsonl(tmp_path / "p.jsonl", [row])).examples
    assert ex.messages == (
        ("system", "be brief"),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", "what is 1+1?"),
        ("assistant", "2"),
        ("user", "and times 3?\n\n(of that)"),
        ("assistant", "6"),
    )


@pytest.mark.parametrize("history", [None, [], ""])
def test_a_row_without_history_keeps_its_id(tmp_path, history):
    """Null, [] or an empty cell is no history: the same example and id as a row without the field."""
    plain = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
    (without,) = load_pool(_write_jsonl(tmp_path / "a.jsonl", [plain])).examples
    (empty,) = load_pool(_write_jsonl(tmp_path / "b.jsonl", [{**plain, "history": history}])).examples
    assert empty.messages == without.messages == (("user", "Add 2 and 3."), ("assistant", "5"))
    assert empty.id == without.id
    (talk,) = load_pool(_write_jsonl(tmp_path / "c.jsonl", [{**plain, "history": [["hi", "hello"]]}])).examples
    assert talk.id != without.id


def test_a_subsample_of_an_alpaca_pool_keeps_system_and_history(tmp_path):
    rows = [
        {"instruction": f"q{i}", "input": "", "output": f"a{i}", "system": "s" if i % 2 else "", "history": h}
        for i, h in enumerate([[["u", "v"]], [], [["u", "v"], ["w", "x"]], [], [["y", "z"]]])
    ]
    pool = load_pool(_write_jsonl(tmp_path / "p.jsonl", rows))
    sub = subsample_to_file(pool, 3, seed=0, path=tmp_path / "sub.jsonl")
    by_id = {e.id: e.messages for e in pool.examples}
    assert len(sub) == 3 and all(by_id[e.id] == e.messages for e in sub.examples)


@pytest.mark.parametrize(
    ("history", "field", "fragment"),
    [
        ("hi", "history", "got str"),
        ({"hi": "hello"}, "history", "got dict"),
        (3, "history", "got int"),
        (["hi", "hello"], "history[0]", "got str"),
        ([["hi", "hello", "again"]], "history[0]", "got 3 items"),
        ([["hi", "hello"], ["alone"]], "history[1]", "got 1 items"),
        ([["hi", 5]], "history[0][1]", "expected text, got int"),
        ([[None, "hello"]], "history[0][0]", "missing value"),
    ],
)
def test_a_malformed_history_is_refused_naming_file_row_and_field(tmp_path, history, field, fragment):
    rows = [{"instruction": "fine", "output": "ok"}, {"instruction": "bad", "output": "no", "history": history}]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError) as e:
        load_pool(path)
    message = str(e.value)
    assert message.startswith(f"{path}, row 1, field '{field}'"), message
    assert fragment in message and "\n" not in message


def test_the_cli_refuses_a_malformed_history_in_one_line(tmp_path):
    rows = [{"instruction": f"do {i}", "output": f"y{i}"} for i in range(4)]
    rows[2]["history"] = [["only the question"]]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    result = runner.invoke(
        app, ["baseline", "--method", "random", "--pool", str(path), "--budget", "2", "--out", str(tmp_path / "b")]
    )
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{path}, row 2, field 'history[0]'" in lines[0]
    assert not (tmp_path / "b").exists()
