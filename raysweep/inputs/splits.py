"""Read-only sequences of `Example`s over flat numpy arrays (memory-mapped files), so a trial process holds
pages of a file the OS shares between processes instead of millions of Python ints.

`ExampleArrays`: variable-length examples as one flat ids array, one flat labels array and the offsets
between them (the on-disk tokenized cache, inputs/tokenized.py). `TokenBlocks`: consecutive fixed-length
blocks of a token stream (nanoGPT's train.bin/val.bin), with nothing stored but the stream itself.
Both index and slice like a list (a slice is a view through an index array, no copy) and hand out one
`Example` of plain lists at a time, which is what collation and the adapters' hooks read.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from raysweep.inputs.examples import Example


class _Indexed(Sequence[Example]):
    """A list-like view: `_index[i]` is the position of the view's i-th example in the underlying arrays."""

    _index: np.ndarray

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> _Indexed: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return self._view(self._index[i])
        return self._example(int(self._index[i]))  # numpy raises IndexError past the end, as a list does

    def __iter__(self) -> Iterator[Example]:
        for j in self._index:
            yield self._example(int(j))

    def __add__(self, other) -> list[Example]:  # as lists concatenate (materialises both: small splits only)
        return [*self, *other]

    def __radd__(self, other) -> list[Example]:
        return [*other, *self]

    def take(self, positions: Sequence[int]) -> _Indexed:
        """The examples at `positions` of this view, in that order (a view)."""
        return self._view(self._index[np.asarray(positions, dtype=np.int64)])

    def _view(self, index: np.ndarray) -> _Indexed:
        raise NotImplementedError

    def _example(self, j: int) -> Example:
        raise NotImplementedError


class ExampleArrays(_Indexed):
    """Examples `j` = (ids[offsets[j]:offsets[j+1]], labels[same]); arrays may be np.memmap / mmap'd .npy."""

    def __init__(self, ids: np.ndarray, labels: np.ndarray, offsets: np.ndarray, index: np.ndarray | None = None):
        self.ids, self.labels, self.offsets = ids, labels, offsets
        self._index = np.arange(len(offsets) - 1, dtype=np.int64) if index is None else index

    def _view(self, index: np.ndarray) -> ExampleArrays:
        return ExampleArrays(self.ids, self.labels, self.offsets, index)

    def _example(self, j: int) -> Example:
        start, end = int(self.offsets[j]), int(self.offsets[j + 1])
        return Example(self.ids[start:end].tolist(), self.labels[start:end].tolist())


class TokenBlocks(_Indexed):
    """Block j = tokens[j·L : j·L + L] as inputs and labels (the last block may be shorter, never < 2 tokens:
    blocks start below len − 1, as chunk_text cuts text)."""

    def __init__(self, tokens: np.ndarray, block_len: int, index: np.ndarray | None = None):
        self.tokens, self.block_len = tokens, block_len
        n = len(range(0, len(tokens) - 1, block_len))
        self._index = np.arange(n, dtype=np.int64) if index is None else index

    def _view(self, index: np.ndarray) -> TokenBlocks:
        return TokenBlocks(self.tokens, self.block_len, index)

    def _example(self, j: int) -> Example:
        block = self.tokens[j * self.block_len : (j + 1) * self.block_len].tolist()
        return Example(block, list(block))

    def covered(self) -> int:
        """Tokens of the stream up to the end of the last block of this view (blocks are read in order)."""
        if not len(self._index):
            return 0
        return min(len(self.tokens), (int(self._index.max()) + 1) * self.block_len)

    def max_id(self, chunk: int = 1 << 24) -> int:
        """The largest token id the view's blocks cover, read in chunks (a multi-GB memmap is never copied)."""
        used = self.covered()
        return max((int(self.tokens[i : i + chunk].max()) for i in range(0, used, chunk)), default=-1)
