"""Differential fuzzing of the native ModelInferRequest parser (_core.protocol) against protobuf.

Run it under the sanitized build (after `bash .ci/sanitize` has made .venv-sanitize, or a
`pip install . -C cmake.define.MODELSERVE_SANITIZE=ON ...` into it), from outside the checkout so
that `import modelserve` is the installed, sanitized extension:

    cd tests && LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)" PYTHONMALLOC=malloc \
      ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0:suppressions=$PWD/../.ci/sanitize.supp \
      UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:suppressions=$PWD/../.ci/ubsan.supp \
      ../.venv-sanitize/bin/python ../bench/fuzz/fuzz_infer_request.py --count 100000

libstdc++ is preloaded too: without it ASan's __cxa_throw interceptor finds no real __cxa_throw
(Python does not link libstdc++) and aborts at the first C++ exception, i.e. the first refusal.

Each case is a protobuf-built or a wire-written request, damaged half the time (the generators of
tests/infer_request_wire.py, which tests/test_protocol.py drives with Hypothesis). Every case must
parse to the same fields as protobuf's, or be refused by both; any sanitizer report aborts the
process. Prints the counts and the rate; exits 1 on the first disagreement, printing the case.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests"))

import infer_request_wire as wire  # noqa: E402
import modelserve  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="cases to run (default 100,000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()

    print(f"modelserve from {modelserve.__file__}", file=sys.stderr)
    rng = random.Random(args.seed)
    accepted = 0
    start = time.perf_counter()
    for i in range(args.count):
        data = wire.generated(rng)
        try:
            accepted += wire.check(data)
        except AssertionError as e:
            print(f"case {i} (seed {args.seed}) disagrees with protobuf:\n{e}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - start
    print(f"{args.count} cases (seed {args.seed}): {accepted} accepted and {args.count - accepted} refused by both "
          f"parsers, no disagreement; {args.count / elapsed:,.0f} cases/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
