"""Hooks of the project's lm-evaluation-harness tasks: every raw row (file or hub shape)
becomes the doc of `raise_select.data.benchmarks`, so evaluation and validation sets
share one parser and one prompt format."""

from raise_select.data.benchmarks import BENCHMARKS, LETTERS, format_prompt, format_response


def _process(name: str):
    to_doc = BENCHMARKS[name].to_doc

    def process_docs(dataset):
        return dataset.map(lambda rec, i: to_doc(rec, name, i), with_indices=True, remove_columns=dataset.column_names)

    return process_docs


process_mmlu = _process("mmlu")
process_mmlu_college_mathematics = _process("mmlu_college_mathematics")
process_arc_challenge = _process("arc_challenge")
process_commonsenseqa = _process("commonsenseqa")
process_mathqa = _process("mathqa")
process_gsm8k = _process("gsm8k")


def doc_to_text(doc: dict) -> str:
    return format_prompt(doc)


def doc_to_choice(doc: dict) -> list[str]:
    return list(LETTERS[: len(doc["choices"])])


def doc_to_target(doc: dict):
    """The gold choice index for multiple choice; the full gold answer text for GSM8K."""
    return doc["label"] if "choices" in doc else format_response(doc)
