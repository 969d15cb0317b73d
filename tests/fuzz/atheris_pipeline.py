"""Coverage-guided fuzzing of the whole pipeline with atheris (libFuzzer), optional.

The same harness as tests/unit/test_fuzz_translate.py (golden inputs, mutated, through parser, every
translator and render), but the mutations are read from libFuzzer's input bytes, so inputs that reach
new lines of cilia are kept and mutated further. Not part of the pytest suite (atheris is optional):

    pip install atheris
    mkdir -p /tmp/cilia-fuzz/corpus
    PYTHONPATH=src python tests/fuzz/atheris_pipeline.py /tmp/cilia-fuzz/corpus -artifact_prefix=/tmp/cilia-fuzz/ \
        -max_total_time=600 -max_len=256 -len_control=0 -rss_limit_mb=4096

A crash prints the input; turn it into an `@example` in test_fuzz_translate.py when fixing it.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import atheris

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "unit")]

with atheris.instrument_imports(include=["cilia"]):
    import cilia.k8s.kinds
    import cilia.render.world
    import cilia.translate  # noqa: F401

import test_fuzz_translate as harness  # noqa: E402  (after instrumentation, on purpose)

OPS = ("sametype", "replace", "delete", "insert", "retype", "kind", "deep", "copy")
POOL: list[Any] = [*harness.ODD_SCALARS, *harness.CORPUS_SCALARS, [], {}, [{}], {"name": "x"}]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    docs = copy.deepcopy(harness.CORPUS[fdp.ConsumeIntInRange(0, len(harness.CORPUS) - 1)])
    as_json = fdp.ConsumeBool()
    option = harness.OPTIONS[fdp.ConsumeIntInRange(0, len(harness.OPTIONS) - 1)]
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        op = OPS[fdp.ConsumeIntInRange(0, len(OPS) - 1)]
        at = fdp.ConsumeIntInRange(0, 10**6)
        value = POOL[fdp.ConsumeIntInRange(0, len(POOL) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicode(8)
        harness.mutate(docs, op, at, copy.deepcopy(value))
    harness.run_pipeline(docs, as_json, option)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
