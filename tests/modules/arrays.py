"""Arrays and bytes, for the binary segment tests (needs numpy)."""

import numpy as np


class Arrays:
    def __init__(self):
        self._cache = {}

    def floats(self, n):
        """``n`` float64 values 0, 1, 2, ... (made once per n)."""
        if ("f", n) not in self._cache:
            self._cache[("f", n)] = np.arange(n, dtype=np.float64)
        return self._cache[("f", n)]

    def frame(self, rows=2048, cols=2048):
        """A uint16 camera frame (made once per size)."""
        if ("u", rows, cols) not in self._cache:
            self._cache[("u", rows, cols)] = (
                (np.arange(rows * cols, dtype=np.uint32) % 65521)
                .astype(np.uint16)
                .reshape(rows, cols)
            )
        return self._cache[("u", rows, cols)]

    def echo(self, value):
        return value

    def describe(self, value):
        """What arrived: type, dtype, shape, writable, and a checksum."""
        if isinstance(value, bytes):
            return ["bytes", len(value), sum(value) % 65536]
        return [
            type(value).__name__,
            value.dtype.str,
            list(value.shape),
            bool(value.flags.writeable),
            float(np.asarray(value, dtype=np.float64).sum()),
        ]

    def kinds(self):
        """One of each thing that travels, nested."""
        return {
            "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
            "strided": np.arange(10, dtype="<i2")[::3],
            "bools": np.array([True, False, True]),
            "big_endian": np.arange(3, dtype=">f4"),
            "complex": np.array([1 + 2j, 3 - 4j]),
            "scalar": np.float32(2.5),
            "complex_scalar": np.complex64(1 - 1j),
            "int_scalar": np.int64(7),
            "empty": np.zeros((0, 3)),
            "bytes": b"\x00\n\xffraw",
            "bytearray": bytearray(b"ba"),
            "memoryview": memoryview(b"mv"),
            "list": [np.ones(2, dtype=np.uint8), [b"x", {"deep": np.zeros((1, 1, 1))}]],
            "nan": float("nan"),
            "text": "ok",
        }

    def objects(self):
        return np.array([1, "a", None], dtype=object)

    def with_nan(self):
        return [float("nan"), np.array([np.nan, 1.0])]
