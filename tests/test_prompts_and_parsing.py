from selfinstruct.filters import rejection_reason
from selfinstruct.prompts import (
    bootstrap_prompt,
    classification_prompt,
    instance_prompt,
)
from selfinstruct.steps.parsing import capitalize_first, parse_yes_no, split_numbered_list


def test_bootstrap_prompt_is_a_numbered_list_ending_at_the_next_number():
    prompt = bootstrap_prompt([f"Task   number\n{i}:" for i in range(1, 9)])
    lines = prompt.split("\n")
    assert lines[0] == "Come up with a series of tasks:"
    assert lines[1] == "1. Task number 1"  # whitespace folded, trailing colon dropped
    assert lines[8] == "8. Task number 8"
    assert lines[9] == "9."
    assert prompt.endswith("\n9.")


def test_classification_bootstrap_prompt_has_the_label_hint():
    prompt = bootstrap_prompt(["A b c d"] * 8, classification=True)
    assert prompt.startswith(
        "Come up with a series of classification tasks. "
        "Try to specify the possible output labels when possible.\n1. "
    )


def test_classification_and_instance_prompts_end_with_the_task():
    p = classification_prompt("  Is this email spam?  ")
    assert p.endswith("\nTask: Is this email spam?\nIs it classification?")
    assert p.startswith("Can the following task be regarded as a classification task")
    g = instance_prompt("Sort the numbers.", is_classification=False)
    assert g.startswith("Come up with examples for the following tasks.")
    assert g.endswith("\nTask: Sort the numbers.\n")
    c = instance_prompt("Label the tone.", is_classification=True)
    assert c.startswith("Given the classification task definition and the class labels")
    assert c.endswith("\nTask: Label the tone.\n")


def test_split_numbered_list_reads_the_continuation():
    text = " Write a haiku about rain.\n10. List three uses of  vinegar.\n11 . Name a color\n12. "
    assert split_numbered_list(text) == [
        "Write a haiku about rain.",
        "List three uses of vinegar.",
        "Name a color",
    ]
    assert split_numbered_list("") == []
    assert split_numbered_list("   \n  ") == []


def test_capitalize_first_keeps_the_rest_unless_asked():
    assert capitalize_first("write a Python function") == "Write a Python function"
    assert capitalize_first("write a Python function", lowercase_rest=True) == (
        "Write a python function"
    )


def test_filters_name_the_reason():
    assert rejection_reason("Too short here") == "too_short"
    assert rejection_reason("Four words are enough") is None
    assert rejection_reason(" ".join(["word"] * 151)) == "too_long"
    assert rejection_reason(" ".join(["word"] * 150)) is None
    assert rejection_reason("Describe the image of a cat sitting") == "banned_word"
    assert rejection_reason("Explain how to go to the station quickly") == "banned_word"
    assert rejection_reason("Explain the mapping of keys to values") is None  # whole words only
    assert rejection_reason("Write a program that sorts a list") == "write_a_program"
    assert rejection_reason("- List the planets in order") == "leading_punctuation"
    assert rejection_reason("Écris une phrase en français ici") == "non_ascii_start"


def test_parse_yes_no_is_robust():
    assert parse_yes_no(" Yes") == "Yes"
    assert parse_yes_no("yes.") == "Yes"
    assert parse_yes_no("NO") == "No"
    assert parse_yes_no("Answer: no, it is not") == "No"
    assert parse_yes_no("Maybe") is None
    assert parse_yes_no("") is None
    assert parse_yes_no("Nothing") is None  # "no" must be a whole word
