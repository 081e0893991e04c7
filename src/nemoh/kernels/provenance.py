"""Where the data a kernel receives came from (candidate process; loaded by path, imports nothing from nemoh).

Every storage gets a content digest. Trusted are: the forward's inputs and the module's parameters and buffers as
they were when the forward began, storages a Triton launch changed (as the launch left them), copies of trusted
data made by allowed ATen layout/dtype ops, and storages that are all zero bytes or all 0xFF (fresh allocations
are filled with 0xFF here, so garbage never carries information). Checked:
  * before each launch: every tensor argument holds trusted content, else the launch is fed data computed outside
    the kernels (ATen with the recorder off, numpy, ctypes, an extension: whatever computed it);
  * at the end: the returned tensor is what a launch wrote, unchanged since; every input tensor reached a launch;
    inputs and parameters are unchanged;
  * the scalars passed to launches and constant fills: the parent requires them identical across trials (they
    would otherwise smuggle values computed elsewhere).
In-process, so a candidate with raw memory access could forge it: the static rules and the audit hook keep
ctypes, private APIs and attribute rebinding out.
"""
from __future__ import annotations

import hashlib
from typing import cast

import torch

POISON = 0xFF
# bound now, before the candidate is imported: rebinding torch.eq or Tensor.__eq__ later does not change the monitor
_EMPTY, _SET, _UNTYPED, _EQ, _ALL = torch.empty, torch.Tensor.set_, torch.Tensor.untyped_storage, torch.eq, torch.all
_CPU, _NUMPY, _BLAKE = torch.Tensor.cpu, torch.Tensor.numpy, hashlib.blake2b


def storage_bytes(t: torch.Tensor) -> torch.Tensor:
    """A uint8 view of t's whole storage (no copy)."""
    s = _UNTYPED(t)
    return _SET(_EMPTY(0, dtype=torch.uint8, device=t.device), s, 0, (s.nbytes(),), (1,))


def digest(t: torch.Tensor) -> bytes:
    b = storage_bytes(t)
    # a uint8 ndarray is a buffer; numpy's stubs do not say so
    return _BLAKE(_NUMPY(b if b.device.type == "cpu" else _CPU(b)), digest_size=16).digest()  # type: ignore[arg-type]


def _key(t: torch.Tensor) -> int:
    return _UNTYPED(t).data_ptr()


def _blank(t: torch.Tensor) -> bool:
    b = storage_bytes(t)
    return bool(_ALL(_EQ(b, 0))) or bool(_ALL(_EQ(b, POISON)))


class Provenance:
    def __init__(self) -> None:
        self.sources: dict[int, tuple[bytes, str]] = {}       # inputs, parameters, buffers at forward start
        self.kernel: dict[int, bytes] = {}                    # as the last launch that changed it left it
        self.derived: dict[int, tuple[bytes, frozenset]] = {}  # allowed copies of trusted data, their origins
        self.reached: set[str] = set()
        self.findings: list[str] = []
        self.signature: list[tuple] = []                      # (what, scalars) per launch / constant fill

    def begin(self, inputs: list, module: torch.nn.Module) -> None:
        self.__init__()  # type: ignore[misc]  # resets every field in place; no subclasses
        named = [(f"input {i}", x) for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        named += [(f"parameter {n}", p) for n, p in module.named_parameters()]
        named += [(f"buffer {n}", b) for n, b in module.named_buffers()]
        for label, t in named:
            if _UNTYPED(t).nbytes():
                self.sources[_key(t)] = (digest(t), label)

    def origins(self, t: torch.Tensor) -> frozenset | None:
        """The origins of t's current content when it is trusted, else None."""
        if not _UNTYPED(t).nbytes():
            return frozenset()
        k, d = _key(t), digest(t)
        if self.kernel.get(k) == d:
            return frozenset({"kernel"})
        if k in self.sources and self.sources[k][0] == d:
            return frozenset({self.sources[k][1]})
        if k in self.derived and self.derived[k][0] == d:
            return self.derived[k][1]
        return frozenset() if _blank(t) else None

    def before_launch(self, name: str, tensors: list[torch.Tensor], scalars: tuple) -> list[bytes]:
        self.signature.append((name, scalars))
        for t in tensors:
            o = self.origins(t)
            if o is None:
                self.findings.append(f"kernel {name} is fed a {tuple(t.shape)} tensor that no kernel wrote and that "
                                     "is not an input (computed outside the kernels)")
            else:
                self.reached |= o
        return [digest(t) for t in tensors]

    def after_launch(self, tensors: list[torch.Tensor], before: list[bytes]) -> None:
        for t, d in zip(tensors, before):
            after = digest(t)
            if after != d:
                self.kernel[_key(t)] = after

    def after_copy(self, dst: torch.Tensor, srcs: list[torch.Tensor]) -> None:
        """An allowed ATen copy (clone, contiguous, dtype cast, copy_): dst is trusted if its sources were."""
        origins = [self.origins(s) for s in srcs if _UNTYPED(s).data_ptr() != _key(dst)]
        if all(o is not None for o in origins) and _UNTYPED(dst).nbytes():
            known = cast(list[frozenset], origins)  # all not None: checked above
            self.derived[_key(dst)] = (digest(dst), frozenset().union(*known))

    def constant(self, what: str, scalars: tuple) -> None:
        self.signature.append((what, scalars))

    def end(self, out, inputs: list) -> list[str]:
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        for i, o in enumerate(outs):
            if type(o) is not torch.Tensor:
                continue
            origins = self.origins(o)
            if origins is None or "kernel" not in origins:
                self.findings.append(f"output {i} was not written by a Triton kernel (or was changed after)")
        for i, x in enumerate(inputs):
            if isinstance(x, torch.Tensor) and x.numel() and f"input {i}" not in self.reached:
                self.findings.append(f"input {i} never reaches a Triton kernel")
        return list(dict.fromkeys(self.findings))

    def changed_sources(self, inputs: list, module: torch.nn.Module) -> list[str]:
        """Inputs and parameters whose content differs from the start of the forward."""
        named = [(f"input {i}", x) for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        named += [(f"parameter {n}", p) for n, p in module.named_parameters()]
        return [f"mutates its {label}" for label, t in named
                if _UNTYPED(t).nbytes() and self.sources.get(_key(t), (None,))[0] != digest(t)]
