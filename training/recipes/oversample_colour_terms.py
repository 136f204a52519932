"""A training folder in which photos captioned with a rare colour term are repeated, for edn-tiny's word stage.

In edn-tiny's captions "purple" names 31 photos and "brown" 1,074, so a rare term's meaning is learned from a
handful of examples. Each photo is repeated round(TARGET / n) times (at least once, at most MAX_REPEATS), n the
number of photos whose caption names its rarest term: purple's 31 photos become 186 examples, 2,335 photos 3,045.
The repeats are symlinks to the same files, so an imagefolder loader sees them as examples of their own.

    python training/recipes/oversample_colour_terms.py --data edn-tiny/data --out edn-tiny/data-words
"""

import argparse
import json
import os
from collections import Counter
from pathlib import Path

from edn_pipeline.colour_terms import BASIC_COLOUR_TERMS

# How many examples each term should have at least, and the most times one photo is shown per epoch: six copies of
# one photo in four cached views is as far as repetition goes before the photo itself is learned.
TARGET, MAX_REPEATS = 200, 6


def caption_terms(caption: str) -> list[str]:
    """The basic colour terms a recipe caption names ("a photo of a bee, mostly yellow and green")."""
    _, _, named = caption.partition(", mostly ")
    return [word for word in named.replace(",", " ").split() if word in BASIC_COLOUR_TERMS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the recipe's training folder (metadata.jsonl)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--target", type=int, default=TARGET, help="examples each term should have at least")
    parser.add_argument("--max-repeats", type=int, default=MAX_REPEATS, help="the most copies of one photo")
    args = parser.parse_args()
    rows = [json.loads(line) for line in open(args.data / "metadata.jsonl")]
    counts = Counter(term for row in rows for term in set(caption_terms(row["text"])))
    args.out.mkdir(parents=True, exist_ok=True)
    examples = 0
    with open(args.out / "metadata.jsonl.tmp", "w") as metadata:
        for row in rows:
            repeats = max(
                [
                    min(args.max_repeats, max(1, round(args.target / counts[term])))
                    for term in caption_terms(row["text"])
                ]
                or [1]
            )
            name = Path(row["file_name"])
            for copy in range(repeats):
                link = name.name if copy == 0 else f"{name.stem}_r{copy}{name.suffix}"
                if not (args.out / link).exists():
                    os.symlink((args.data / name).resolve(), args.out / link)
                metadata.write(json.dumps({**row, "file_name": link}) + "\n")
            examples += repeats
    os.replace(args.out / "metadata.jsonl.tmp", args.out / "metadata.jsonl")
    print(f"{len(rows)} photos, {examples} examples: " + ", ".join(f"{t} {counts[t]}" for t in BASIC_COLOUR_TERMS))


if __name__ == "__main__":
    main()
