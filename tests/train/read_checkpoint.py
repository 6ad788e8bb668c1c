#!/usr/bin/env python3
"""Print an ssmtrain checkpoint with h5py: root attributes, then every dataset with its
dtype, shape, crc32 check and first values. bf16 datasets are decoded from their uint16
bit patterns.

    python3 tests/train/read_checkpoint.py runs/x/ckpt_00001000.h5

With --expect-interop-test it also asserts the exact contents that the C++ test
"checkpoint file reads back in h5py" writes, so the two implementations are checked
against each other (exit status 1 on any mismatch).
"""
import sys
import zlib

import h5py
import numpy as np


def text(value):
    """Fixed-length string attributes and datasets come back from h5py as bytes."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def values_of(dataset):
    """The dataset as numpy values in our dtype's meaning (bf16 bits -> float32)."""
    data = dataset[()]
    if text(dataset.attrs["dtype"]) == "bf16":
        bits = np.asarray(data, dtype="<u2").astype("<u4") << 16
        return bits.view("<f4")
    return data


def crc_matches(dataset):
    data = dataset[()]
    if text(dataset.attrs["dtype"]) == "str":
        payload = bytes(data)
    else:
        payload = np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes()
    return zlib.crc32(payload) == int(dataset.attrs["crc32"])


def collect(f):
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def print_checkpoint(f):
    for key in sorted(f.attrs):
        value = f.attrs[key]
        print(f"@{key} = {text(value) if isinstance(value, (bytes, np.bytes_)) else value}")
    for name in collect(f):
        ds = f[name]
        dtype = text(ds.attrs["dtype"])
        if dtype == "str":
            shown = repr(text(ds[()]))
        else:
            shown = np.array2string(np.ravel(values_of(ds))[:8], separator=", ")
        status = "crc ok" if crc_matches(ds) else "CRC MISMATCH"
        print(f"{name}  dtype={dtype}  shape={tuple(ds.shape)}  {status}  {shown}")


def expect_interop_test(f):
    assert text(f.attrs["format"]) == "ssmtrain-checkpoint", f.attrs["format"]
    assert int(f.attrs["format_version"]) == 1
    assert int(f.attrs["step"]) == 1234
    assert int(f.attrs["seed"]) == 2**64 - 1
    assert float(f.attrs["loss"]) == 2.5
    assert text(f.attrs["run_name"]) == "interop"

    names = collect(f)
    expected = ["config", "model/embedding.weight", "model/layers.0.mixer.A_log", "optim/exp_avg/layers.0.mixer.A_log",
                "optim/step", "trainer/empty"]
    assert names == expected, names
    assert int(f.attrs["num_datasets"]) == len(expected)
    for name in names:
        assert crc_matches(f[name]), f"crc32 of {name} does not match"

    assert text(f["config"][()]) == "model:\n  d_model: 64\n"
    a_log = f["model/layers.0.mixer.A_log"]
    assert a_log.dtype == np.dtype("<f4") and a_log.shape == (2, 3)
    assert np.array_equal(a_log[()], np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5)
    emb = f["model/embedding.weight"]
    assert text(emb.attrs["dtype"]) == "bf16" and emb.dtype == np.dtype("<u2")
    assert np.array_equal(values_of(emb), np.array([1.0, -2.0, 0.5], dtype=np.float32))
    assert np.array_equal(f["optim/exp_avg/layers.0.mixer.A_log"][()], -np.arange(6, dtype=np.float64).reshape(2, 3))
    step = f["optim/step"]
    assert step.shape == () and step.dtype == np.dtype("<i8") and int(step[()]) == 7
    assert f["trainer/empty"].shape == (0, 4) and text(f["trainer/empty"].attrs["dtype"]) == "i32"
    assert int(f["trainer"].attrs["epoch"]) == -3
    print("interop expectations: all passed")


def main(argv):
    paths = [a for a in argv[1:] if not a.startswith("--")]
    if len(paths) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with h5py.File(paths[0], "r") as f:
        print_checkpoint(f)
        if "--expect-interop-test" in argv:
            expect_interop_test(f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
