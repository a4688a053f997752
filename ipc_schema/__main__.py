"""``python -m ipc_schema [FILE]``: write the JSON Schema of the IPC protocol."""

from __future__ import annotations

import json
import sys

from ipc_schema import export_json_schema


def main() -> None:
    text = json.dumps(export_json_schema(), indent=2, sort_keys=True) + "\n"
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
