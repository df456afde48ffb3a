"""``glccl config``: the run-config schema and resolved configs.

    glccl config --list                                   # every key: dotted name, type, default, what it does
    glccl config --list train                             # the keys of one section
    glccl config --show --config configs/demo.yaml train.lr=3e-4   # the resolved, validated config as YAML

The keys, types and defaults are read from the dataclasses in ``glccl/config.py`` and the descriptions from the
docstring written under each field there, so this listing cannot drift from the schema.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

import yaml

from glccl.config import REQUIRED, ConfigError, KeyDoc, RunConfig, describe, load_config, to_dict

WIDTH = 116


def _value(v: Any) -> str:
    """A default as it would be written in YAML or a ``key=value`` override."""
    if v is REQUIRED:
        return "required"
    if isinstance(v, str):
        return v if v else '""'
    return json.dumps(v)


def _doc(text: str, indent: str) -> list[str]:
    paragraph = " ".join(text.split())  # the source's line breaks fit its indentation, not this listing's
    return textwrap.wrap(paragraph, WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False) if paragraph else []


def format_keys(keys: list[KeyDoc]) -> list[str]:
    lines: list[str] = []
    for k in keys:
        if k.section:
            lines += ["", f"{k.key}:  ({k.type})", *_doc(k.doc, "  ")]
        else:
            lines += [f"{k.key}  ({k.type}, default {_value(k.default)})", *_doc(k.doc, "    ")]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="glccl config", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", nargs="?", const="", metavar="SECTION",
                   help="list every run-config key (or those of SECTION: model, loss, data, train, scaling)")
    g.add_argument("--show", action="store_true", help="print the resolved config of --config and the overrides")
    p.add_argument("--config", help="with --show: run config YAML (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="with --show: key=value overrides")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.list is not None:
        keys = describe(RunConfig)
        if args.list:
            keys = [k for k in keys if k.key == args.list or k.key.startswith(args.list + ".")]
            if not keys:
                sections = ", ".join(k.key for k in describe(RunConfig) if k.section)
                print(f"glccl config: no section {args.list!r} (sections: {sections})", file=sys.stderr)
                return 2
        print("\n".join(format_keys(keys)).lstrip("\n"))
        return 0
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"glccl config: {e}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
