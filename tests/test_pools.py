import json

import pandas as pd
import pytest

from raise_select.data.pools import load_pool, to_format
from raise_select.data.templates import render_prompt
from raise_select.errors import UserError

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi.", "input": "", "output": "Hi!"},
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_alpaca_json_jsonl_parquet_csv_give_same_ids(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    write_jsonl(tmp_path / "a.jsonl", ALPACA)
    pd.DataFrame(ALPACA).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame(ALPACA).to_csv(tmp_path / "a.csv", index=False)
    pools = [load_pool(tmp_path / f"a.{s}") for s in ("json", "jsonl", "parquet", "csv")]
    for p in pools:
        assert p.format == "alpaca"
        assert p.ids == pools[0].ids
        assert p.examples[0].messages == (("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5"))


def test_folder_loads_every_file_and_reports_duplicates(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    write_jsonl(d / "1.jsonl", ALPACA)
    write_jsonl(d / "2.jsonl", ALPACA[:1] + [{"instruction": "x", "input": "", "output": "y"}])
    p = load_pool(d)
    assert len(p) == 3
    assert p.duplicates == 1


def test_sharegpt_multiturn_last_assistant_is_response(tmp_path):
    rows = [
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": "2+2?"},
                {"from": "gpt", "value": "4"},
                {"from": "human", "value": "thanks"},
            ]
        }
    ]
    p = load_pool(write_jsonl(tmp_path / "s.jsonl", rows))
    ex = p.examples[0]
    assert p.format == "sharegpt"
    assert ex.response == "4"
    assert ex.prompt_messages == (("user", "hi"), ("assistant", "hello"), ("user", "2+2?"))
    assert to_format(ex, "sharegpt")["conversations"][-1] == {"from": "gpt", "value": "4"}


def test_messages_format_and_chat_template(tmp_path, tiny_model_dir):
    from raise_select.models import load_tokenizer

    rows = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
            ]
        }
    ]
    p = load_pool(write_jsonl(tmp_path / "m.jsonl", rows))
    tok = load_tokenizer(str(tiny_model_dir))
    text = render_prompt(p.examples[0].prompt_messages, "chat", tok)
    assert text == "<|system|>\nbe brief</s>\n<|user|>\nhi</s>\n<|assistant|>\n"


def test_alpaca_template_matches_reference_text():
    p_in = render_prompt((("user", "Add.\n\n2 and 3"),), "alpaca", record=ALPACA[0])
    assert p_in.endswith("### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert p_in.startswith("Below is an instruction that describes a task, paired with an input")
    p_no = render_prompt((("user", "Say hi."),), "alpaca", record=ALPACA[1])
    assert "### Input" not in p_no


def test_empty_response_skipped_and_counted(tmp_path):
    rows = ALPACA + [{"instruction": "blank", "input": "", "output": "   "}]
    p = load_pool(write_jsonl(tmp_path / "e.jsonl", rows))
    assert len(p) == 2 and p.skipped == {"empty_response": 1}


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "outp', r"row 1 \(line 2\): malformed JSON"),
        ('{"instruction": "a", "input": ""}\n', "row 0, field 'output': missing field"),
        ('{"foo": 1}\n', "unknown format"),
        ("", "file is empty"),
        ('{"conversations": [{"from": "human", "value": "x"}]}\n', "no assistant turn"),
    ],
)
def test_bad_input_names_file_row_field(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(UserError, match=message) as e:
        load_pool(f)
    assert str(f) in str(e.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_pool(tmp_path / "nope.json")


def test_real_alpaca_gsm8k_mmlu(shared_data):
    alpaca = load_pool(shared_data / "alpaca" / "alpaca_data.json")
    # 52,002 rows: 28 empty outputs skipped; the rest kept once.
    assert alpaca.skipped == {"empty_response": 28}
    assert len(alpaca) + alpaca.duplicates == 52002 - 28
    gsm = load_pool(shared_data / "gsm8k" / "test.jsonl", columns={"instruction": "question", "output": "answer"})
    assert len(gsm) == 1319 and gsm.format == "alpaca"
    assert gsm.examples[0].response.strip().splitlines()[-1].startswith("####")
