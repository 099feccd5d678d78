"""Backend switch for the kernels: Triton where it can run, the plain-PyTorch reference everywhere else.

One global switch, read once from the environment and changed with `set_backend` / `use_backend` (timm keeps its
`exportable`/`fused_attn` switches the same way, in one small file):

* ``"auto"`` (default): Triton kernels for CUDA tensors when ``triton`` imports, the reference otherwise
  (CPU tensors, CPU-only installs, or a broken Triton install).
* ``"triton"``: always Triton. CUDA tensors compile as usual; CPU tensors run through Triton's interpreter (slow,
  for tests). Raises if ``triton`` is not importable.
* ``"reference"``: always the plain-PyTorch reference, e.g. to debug a suspected kernel bug.
  ``SPATIALREWARD_KERNELS=reference`` in the environment does the same without touching code.

`register_linear_op` holds the plumbing every RoIAlign-like op repeats (custom op + fake + backward op + autograd +
eager route); region attention, which is not linear and returns two outputs, registers its own.

When ``triton`` is missing this module also provides tiny stand-ins for ``triton`` / ``triton.language`` so the
kernel files can still *define* their ``@triton.jit`` functions at import time; they are never launched then.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Literal

import torch

Backend = Literal["auto", "triton", "reference"]
_BACKENDS = ("auto", "triton", "reference")
_ENV_VAR = "SPATIALREWARD_KERNELS"

try:  # a CPU-only user may not have triton at all; anything failing here means "no triton"
    import triton
    import triton.language as tl

    HAS_TRITON = True
    _TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # noqa: BLE001 - ImportError, or a broken driver probe inside triton
    HAS_TRITON = False
    _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

    class _Stub:
        """Just enough of `triton` / `triton.language` for kernel *definitions* to import."""

        @staticmethod
        def constexpr(value=None):  # module-level constants; as an annotation it is never evaluated
            return value

        float32 = float16 = bfloat16 = int32 = int64 = None

        @staticmethod
        def jit(fn=None, **_kw):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def autotune(*_a, **_kw):
            return lambda f: f

        @staticmethod
        def heuristics(*_a, **_kw):
            return lambda f: f

        @staticmethod
        def Config(*_a, **_kw):  # noqa: N802 - mirrors triton.Config
            return None

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(0, int(n) - 1).bit_length()

    triton = _Stub()  # type: ignore[assignment]
    tl = _Stub()  # type: ignore[assignment]


def _backend_from_env() -> str:
    value = os.environ.get(_ENV_VAR, "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"{_ENV_VAR}={value!r} is not a kernel backend; use one of {', '.join(_BACKENDS)}")
    return value


_backend: str = _backend_from_env()


def set_backend(name: Backend) -> None:
    """Choose the kernel backend for every op in `spatialreward.kernels` (see the module docstring)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"kernel backend {name!r} is unknown; use one of {', '.join(_BACKENDS)}")
    if name == "triton" and not HAS_TRITON:
        raise RuntimeError(
            f"kernel backend 'triton' needs the triton package, which failed to import ({_TRITON_IMPORT_ERROR}); "
            "install triton or use set_backend('auto') / 'reference'"
        )
    _backend = name


def get_backend() -> str:
    """The backend name currently chosen: "auto", "triton" or "reference"."""
    return _backend


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """``with use_backend("reference"): ...`` runs a block on another backend and restores the previous one."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def use_triton(t: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None) -> bool:
    """Whether an op on tensor `t` should launch a Triton kernel under the current backend.

    `dtypes`: the input dtypes the op's kernels compute in; any other dtype takes the reference whatever the
    backend (RoIAlign's kernels accumulate in fp32, so fp64 input — gradcheck — must not reach them)."""
    if _backend == "reference" or not HAS_TRITON:
        return False
    if dtypes is not None and t.dtype not in dtypes:
        return False
    if _backend == "triton":
        return True
    return t.is_cuda  # "auto"


def eager_fast_path(t: torch.Tensor, dtypes: tuple[torch.dtype, ...] | None = None) -> bool:
    """Whether an op on `t` may launch its Triton kernels through a plain `torch.autograd.Function` instead of its
    `torch.library.custom_op`. The custom op costs host time on every call (dispatch, then a second op for the
    backward); it is only needed where PyTorch traces: `torch.compile`, `torch.export` / ONNX export, `jit.trace`,
    fake tensors. So: Triton backend, real tensors, eager mode. (That route's backward then runs on Triton too,
    whatever the backend is when it runs; the custom op's backward re-reads the backend.)"""
    if not use_triton(t, dtypes) or t.device.type == "meta":
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    from torch._subclasses.fake_tensor import FakeTensor

    return not isinstance(t, FakeTensor)


def check_int32_span(sizes, strides, what: str) -> None:
    """The kernels index inside one sample with int32 (half the registers of int64, and vectorised loads): the
    elements one sample spans, over its `sizes` / `strides` (batch dim excluded), must stay below 2**31."""
    span = sum((size - 1) * abs(stride) for size, stride in zip(sizes, strides))
    if span >= 2**31:
        raise ValueError(
            f"{what}: one sample spans {span} elements, more than the Triton kernel's int32 in-sample indexing "
            "allows; split the channels, or run this call with set_backend('reference')"
        )


def launchable(kernel, t: torch.Tensor):
    """The kernel to launch for tensor `t`: the compiled one on CUDA, an interpreted copy on CPU.

    Triton picks compiled vs interpreted when `@triton.jit` runs, i.e. at import; a CPU tensor under the
    "triton" backend therefore gets an interpreted twin of the same Python function, built once and cached.
    `kernel` is a JITFunction or an Autotuner; on CPU the autotuner is bypassed (the caller passes one
    small config explicitly), because timing configs in the interpreter is meaningless.
    """
    if t.is_cuda:
        return kernel
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, (JITFunction, InterpretedFunction)):
        fn = fn.fn  # Autotuner / Heuristics wrap the JITFunction in `.fn`
    if isinstance(fn, InterpretedFunction):  # TRITON_INTERPRET=1 was set before import
        return fn
    raw = fn.fn  # the undecorated Python function behind the JITFunction
    cached = _INTERPRETED.get(raw)
    if cached is None:
        cached = _INTERPRETED[raw] = InterpretedFunction(raw)
    return cached


_INTERPRETED: dict = {}


def compile_for_gpu(kernel, signature: dict[str, str], constexprs: dict, arch: int = 90, num_warps: int = 4):
    """Compile `kernel` for an NVIDIA GPU of compute capability `arch` without needing one (PTX -> cubin via the
    ptxas bundled with triton). A CPU-side check that the kernel lowers (e.g. bf16 paths the interpreter cannot
    run). `signature` maps every non-constexpr argument to a Triton type ("*bf16", "i32", "fp32").

    Needs a process that imported triton with TRITON_INTERPRET unset/0: with the interpreter on, triton's own
    `tl.max`/`tl.sum` helpers are interpreted functions and cannot be compiled.
    """
    if interpreter_enabled():
        raise RuntimeError("compile_for_gpu needs TRITON_INTERPRET=0 when triton is imported; run it in a subprocess")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, (JITFunction, InterpretedFunction)):
        fn = fn.fn  # unwrap Autotuner / Heuristics
    jit_fn = JITFunction(fn.fn)  # a compilable twin even when TRITON_INTERPRET=1 made `fn` interpreted
    full = {name: ("constexpr" if name in constexprs else signature[name]) for name in jit_fn.arg_names}
    source = ASTSource(jit_fn, full, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def register_linear_op(
    name: str, *, schema: str, backward_schema: str, reference, kernel, fake, backward_reference, backward_kernel,
    backward_fake, backward_args, adjoint_args, dtypes: tuple[torch.dtype, ...],
):
    """Register a RoIAlign-like op: ``y = A(boxes) @ x``, linear in its first input, boxes second, no box gradient.

    Makes the custom ops ``name`` and ``name + "_backward"`` (from the `schema` strings; each dispatches to its
    `kernel` or its `reference` through `use_triton` with `dtypes`), their fakes, and their autograd: the forward's
    gradient is the backward op, and the backward's is the forward again (a linear map's adjoint of the adjoint), so
    double backward works. The backward's Triton kernel scatters with atomics, whose summation order varies, so
    under ``torch.use_deterministic_algorithms(True)`` it takes the reference. Also builds the eager route (a plain
    `torch.autograd.Function` on the kernels; see `eager_fast_path`) and returns the function callers use:
    ``call(x, boxes, *params)`` picks the route.

    `backward_args(inputs)` maps the forward op's inputs to the backward op's arguments after ``(grad, boxes)``;
    `adjoint_args(inputs)` maps the backward op's inputs to the forward op's arguments after ``(x, boxes)``.
    """

    def dispatch(reference_impl, kernel_impl, on_triton):
        def impl(*args):
            return kernel_impl(*args) if on_triton(args[0]) else reference_impl(*args)

        return impl

    def forward_on_triton(t):
        return use_triton(t, dtypes)

    def backward_on_triton(t):
        return use_triton(t, dtypes) and not torch.are_deterministic_algorithms_enabled()

    forward_op = torch.library.custom_op(
        name, dispatch(reference, kernel, forward_on_triton), mutates_args=(), schema=schema
    )
    backward_op = torch.library.custom_op(
        name + "_backward", dispatch(backward_reference, backward_kernel, backward_on_triton), mutates_args=(),
        schema=backward_schema,
    )
    forward_op.register_fake(fake)
    backward_op.register_fake(backward_fake)

    def forward_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.args, ctx.n_inputs = backward_args(inputs), len(inputs)

    def forward_grad(ctx, grad):
        (boxes,) = ctx.saved_tensors
        return (backward_op(grad, boxes, *ctx.args),) + (None,) * (ctx.n_inputs - 1)

    def backward_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.args, ctx.n_inputs = adjoint_args(inputs), len(inputs)

    def backward_grad(ctx, grad_grad):
        (boxes,) = ctx.saved_tensors
        return (forward_op(grad_grad, boxes, *ctx.args),) + (None,) * (ctx.n_inputs - 1)

    forward_op.register_autograd(forward_grad, setup_context=forward_setup)
    backward_op.register_autograd(backward_grad, setup_context=backward_setup)

    def eager_forward(ctx, x, boxes, *params):
        ctx.save_for_backward(boxes)
        ctx.args, ctx.n_inputs = backward_args((x, boxes, *params)), 2 + len(params)
        return kernel(x, boxes, *params)

    def eager_backward(ctx, grad):
        (boxes,) = ctx.saved_tensors
        # create_graph=True needs the differentiable custom op; deterministic mode needs its reference route
        if torch.is_grad_enabled() or torch.are_deterministic_algorithms_enabled():
            grad_x = backward_op(grad, boxes, *ctx.args)
        else:
            grad_x = backward_kernel(grad, boxes, *ctx.args)
        return (grad_x,) + (None,) * (ctx.n_inputs - 1)

    # named after the op (roi_align_tokens -> RoiAlignTokensEager), so grad_fn reads RoiAlignTokensEagerBackward
    eager_name = "".join(part.title() for part in name.split("::")[-1].split("_")) + "Eager"
    eager_route = type(eager_name, (torch.autograd.Function,), {
        "__doc__": f"`{name}` on the kernels without the custom-op layer, for eager calls (see `eager_fast_path`).",
        "forward": staticmethod(eager_forward),
        "backward": staticmethod(eager_backward),
    })

    def call(x: torch.Tensor, boxes: torch.Tensor, *params):
        if eager_fast_path(x, dtypes):
            return eager_route.apply(x, boxes, *params)
        return forward_op(x, boxes, *params)

    return call
