"""The size-and-ends fingerprint that --to-file and --resume compare."""

from tinygen.file_digest import MIB, ends_digest


def test_small_files_are_read_whole_and_big_ones_at_their_ends(tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"a" * 1000)
    before = ends_digest(small)
    small.write_bytes(b"a" * 500 + b"b" + b"a" * 499)  # same size, the middle changed
    assert ends_digest(small) != before

    big = tmp_path / "big.bin"
    data = bytearray(6 * MIB)
    big.write_bytes(bytes(data))
    before = ends_digest(big)
    data[-10] = 1  # an edit at the end (appended lines, last weights)
    big.write_bytes(bytes(data))
    at_end = ends_digest(big)
    assert at_end != before
    data[int(4.5 * MIB)] = 1  # between the ends: the price of not reading gigabytes
    big.write_bytes(bytes(data))
    assert ends_digest(big) == at_end
