"""Extractive card quality and speed on the retrieval evaluation's Vietnamese study passages.

    python -m bench.cards_bench

Per subject and kind: the share of cards whose answer appears in the passage they cite, duplicate
questions, candidates dropped, and the time to make a 50-card deck; beside it, as the same-run
baseline, the time to split the same text into sentences (the least any generator does with it).
Not yet: the 30-page PDF's ingest time beside it (the issue's comparison), nor registration in
``bench/__main__.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from chat.cards import BLANK, CLOZE, FLASHCARD, MULTIPLE_CHOICE, SourceChunk, generate, normalise, supported
from chat.extractive import prose_sentences

DATA = Path(__file__).resolve().parent / "data" / "retrieval"
SUBJECTS = ("db", "dsa", "net", "os", "prob")
KINDS = {"flashcard": FLASHCARD, "cloze": CLOZE, "multiple_choice": MULTIPLE_CHOICE}


def main() -> None:
    print(f"{'subject':8} {'kind':16} {'cards':>5} {'in passage':>10} {'dup q':>5} {'dropped':>7} {'50-card ms':>10}")
    total = held = 0
    for subject in SUBJECTS:
        data = json.loads((DATA / f"{subject}.json").read_text())
        chunks = [SourceChunk(subject, subject, p["id"], 0, p.get("title", ""), p["text"]) for p in data["passages"]]
        started = time.perf_counter()
        for chunk in chunks:
            prose_sentences(chunk.text)
        split_ms = (time.perf_counter() - started) * 1000
        for name, kind in KINDS.items():
            started = time.perf_counter()
            made = generate(chunks, kind, 50)
            elapsed_ms = (time.perf_counter() - started) * 1000
            ok = sum(supported(c.back, c.source.text) for c in made.cards)
            fronts = [normalise(c.front.replace(BLANK, " ")) for c in made.cards]
            total += len(made.cards)
            held += ok
            print(
                f"{subject:8} {name:16} {len(made.cards):5} {ok / max(1, len(made.cards)):10.1%}"
                f" {len(fronts) - len(set(fronts)):5} {made.dropped:7} {elapsed_ms:10.0f}"
                f"   (sentence split of the same text: {split_ms:.1f} ms)"
            )
    print(f"all: {held}/{total} cards answer from their passage ({held / max(1, total):.1%})")


if __name__ == "__main__":
    main()
