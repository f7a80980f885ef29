"""Small builders shared by the tests: toy seed tasks, endless distinct instructions, and
`run_cli`, the one way a test runs the command line in its own process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

from selfinstruct.records import Instance, SeedTask

WORDS = (
    "apple river stone cloud pencil garden violin rocket candle mirror ladder blanket "
    "harbor tiger orbit canyon lantern meadow pillow saddle falcon glacier velvet thunder "
    "compass anchor biscuit dolphin ember fossil gravel hammock igloo jigsaw kettle lemon"
).split()


def toy_seeds(n: int = 12, *, classification_every: int | None = None) -> list[SeedTask]:
    """n seed tasks about two words each; every k-th one a classification task if asked."""
    return [
        SeedTask(
            id=f"seed_task_{i}",
            name=f"seed_{i}",
            instruction=f"Describe the {WORDS[i]} and the {WORDS[i + 1]} in one short paragraph.",
            instances=(Instance("", f"An answer about {WORDS[i]}."),),
            is_classification=classification_every is not None and i % classification_every == 0,
        )
        for i in range(n)
    ]


def fresh_instructions() -> Iterator[str]:
    """Distinct instructions: four new made-up words each, so ROUGE-L between them is 2/3."""
    syllables = ["ka", "lo", "mi", "ter", "su", "van", "pe", "dor", "qui", "zel"]
    words = (a + b + c for a in syllables for b in syllables for c in syllables)
    while True:
        w = [next(words) for _ in range(4)]
        yield f"Compose a riddle mixing {w[0]} {w[1]} {w[2]} {w[3]} for children"


def run_cli(
    *args: str, timeout: float = 120, env: dict | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    """The command line as a user runs it: `selfinstruct ARGS` in a fresh process (so exit
    codes, stderr and signals are the real ones), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", "from selfinstruct.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
    )
