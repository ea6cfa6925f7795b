"""Copier migration: rename a question's recorded answer in .copier-answers.yml.

Run by `copier update` before it renders the new template version (the
"before" stage), from the project's directory:

    _migrations:
      - version: "2.0.0"
        when: "{{ _stage == 'before' }}"
        command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/copier-migrations/rename_answer.py",
                  "email", "contact_email"]

Without it, an update after a question is renamed would drop the old answer
and give the new question its default. Copier re-reads the answers file after
the "before" migrations, so the new template version sees the value under its
new name.

Idempotent: does nothing when OLD is not recorded; refuses when both names are
recorded with different values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml  # Copier's own dependency: this runs with Copier's interpreter.


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the question's name before the rename")
    parser.add_argument("new", help="the question's name in the new template version")
    parser.add_argument("--answers-file", type=Path, default=Path(".copier-answers.yml"))
    args = parser.parse_args()

    text = args.answers_file.read_text()
    answers = yaml.safe_load(text) or {}
    if args.old not in answers:
        print(f"rename_answer: no answer for {args.old}: nothing to rename.")
        return 0
    value = answers.pop(args.old)
    if args.new in answers and answers[args.new] != value:
        print(
            f"rename_answer: both {args.old} ({value!r}) and {args.new} ({answers[args.new]!r})"
            f" are in {args.answers_file}: keep one of them by hand, then update again.",
            file=sys.stderr,
        )
        return 1
    answers[args.new] = value
    # Keep the header comment; Copier rewrites the rest of the file after the update.
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    args.answers_file.write_text(header + yaml.safe_dump(answers, sort_keys=True))
    print(f"rename_answer: {args.old} -> {args.new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
