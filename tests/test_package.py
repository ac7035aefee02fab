import re
from pathlib import Path

import modelserve
from modelserve._native import core


def test_version_has_one_source():
    text = (Path(modelserve.__file__).parent / "_version.py").read_text()
    (declared,) = re.findall(r'__version__ = "([^"]+)"', text)
    assert modelserve.__version__ == declared
    assert core.__version__ == declared  # compiled in by CMake from the same file


def test_cuda_queries_answer_without_a_gpu():
    count = modelserve.cuda.device_count()
    assert count >= 0
    assert modelserve.cuda.is_available() == (count > 0)
    assert isinstance(modelserve.cuda.compiled(), bool)
    if modelserve.cuda.compiled():
        assert re.fullmatch(r"\d+\.\d+", modelserve.cuda.runtime_version())


def test_status_table_matches_the_core():
    for name, code in core.STATUS_CODES.items():
        if name == "OK":
            continue
        err = modelserve.errors.from_status(code, "m")
        assert err.status == name
        assert err.code == code
    assert modelserve.errors.from_status(4, "x").http_status == 429
    assert modelserve.errors.from_status(5, "x").grpc_code == "DEADLINE_EXCEEDED"
    assert isinstance(modelserve.errors.from_status(1, "x"), ValueError)
