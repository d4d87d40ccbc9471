# mypy: disable-error-code="no-untyped-def"
"""Triton kernels of the adapters' decode path (``lora.py``): gathered LoRA products, one pair of launches per
projection whatever the mix of adapters in the batch (Punica's BGMV, vLLM's shrink/expand), or none of their own
where the shrink is folded into the base product and the expand into the kernel after it (an adapted decode layer on
one rank launches the base layer's 10 kernels: ``lora.py`` counts them).

Rank values (x·A per row), two sources, and every expand reads either:

* the fold (the default where the base product runs on a Triton skinny kernel): ``kernels.Tail`` makes the base
  product's own launch compute x·A for every pool slot the batch uses, a float32 [rows, slots·parts·R] buffer; row
  m's values are at columns slot·(parts·R).., so the expands step ``slot_stride`` = parts·R per slot (2-D input).
* ``shrink``: each (row, K-chunk) program reads its row's adapter index (-1: the base model, the program leaves at
  once), multiplies its chunk of x by that adapter's A stack [parts·R, K] and writes its partial sums [parts·R] in
  float32 (split-K without float atomics). From SHRINK_SUMS_FROM_ROWS rows on, the last program of a row to finish
  (an integer counter per row says which; it sets it back to 0) sums the row's partials in a fixed order into the
  row's rank values, so the result does not depend on which program came last; below, each expand program sums the
  partials of its rows itself (a one-row step saves the counter's round trip). The output (``new_partial``, 3-D)
  holds the row's own slot only: slot stride 0.

``expand``: each program owns a column tile and a block of up to 16 rows. For every pool slot that one of its rows
uses it loads that slot's B tile [R, tile] once and multiplies the rank values of all its rows by it (rows of other
adapters contribute exact zeros), so a B tile is read once per adapter and row block, not once per row; then it
adds the product into the base output in place (rows of the base model: untouched). The gate/up and Q/K/V expands
are fused into SiLU·up and the rotary + KV write, which they compute for every row (base rows: the product is 0).
With ``HANBOT_LORA_NORM_FUSE=1`` (opt-in until measured on a GPU) the o and down expands (one part) are fused into
the residual add + RMSNorm after them (``lora_expand_rms_norm``, one rank only: under tensor parallelism the
all-reduce lies between): one program per row, as ``kernels.rms_norm``
(the norm needs the whole row), adds its slot's R rank values times B [R, N] to the base output, rounds as the
expand would store it, then adds the residual and normalises as ``_rms_norm_kernel`` does (base rows: its bits).
Products of the rank values and B are float32 (``tl.dot`` in IEEE precision, no TF32: DOT_PRECISION), rounded
where the expand alone would round them. The torch reference is ``lora.add_rows_ref``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

SHRINK_BLOCK_K = 128
MAX_SPLIT = 64
MIN_K_PER = (
    256  # the shrink splits K into chunks of at least this many (more chunks: more programs in flight)
)
# batches of this many rows or more: the shrink's last program per row sums its partials, and the expand reads R
# values per row; fewer: each expand program sums its rows' partials (no counter round trip in the shrink)
SHRINK_SUMS_FROM_ROWS = 2
ROW_BLOCK = 16  # rows per expand program (a batch of one row: 1)
# the expand's rank values × B for a block of rows: "ieee" float32 (FMA); "tf32x3" (tensor cores, about float32's
# accuracy) spends less when a block's rows spread over many adapters (each adapter's product covers every row)
DOT_PRECISION = "ieee"
MIN_PROGRAMS = 128  # the expand's column tile is halved (down to 32) until its grid has this many programs


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a_ptr,
    idx_ptr,
    part_ptr,
    inter_ptr,
    count_ptr,
    K,
    K_PER,
    stride_x,
    stride_as,
    stride_p,
    J: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
    SUM: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """SUM: the row's last program sums the partials into ``inter_ptr`` (else the expand sums them)."""
    row = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    idx = tl.load(idx_ptr + row).to(tl.int64)
    if idx >= 0:
        j = tl.arange(0, JP)
        acc = tl.zeros((JP,), dtype=tl.float32)
        k0 = sp * K_PER
        a_base = a_ptr + idx * stride_as
        for kk in tl.range(0, K_PER, BLOCK_K):
            offs = k0 + kk + tl.arange(0, BLOCK_K)
            m = (offs < K) & (offs < k0 + K_PER)
            xv = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0).to(tl.float32)
            av = tl.load(
                a_base + j[:, None] * K + offs[None, :], mask=(j[:, None] < J) & m[None, :], other=0.0
            )
            acc += tl.sum(av.to(tl.float32) * xv[None, :], axis=1)
        tl.store(part_ptr + row * stride_p + sp * JP + j, acc)
        if SUM:
            tl.debug_barrier()  # every thread's partial is written before the counter moves (release below)
            done = tl.atomic_add(count_ptr + row, 1, sem="acq_rel", scope="gpu")
            if done == SPLIT - 1:  # the row's last program: the others' partials are visible (acquire above)
                s = tl.arange(0, SPLIT)
                parts = tl.load(
                    part_ptr + row * stride_p + s[:, None] * JP + j[None, :], cache_modifier=".cg"
                )
                tl.store(inter_ptr + row * stride_p + j, tl.sum(parts, axis=0))
                tl.store(count_ptr + row, 0)  # ready for the next launch


@triton.jit
def _rank_values(ip, sel, part, R: tl.constexpr, RP: tl.constexpr, JP: tl.constexpr, SPLIT: tl.constexpr):
    """[rows, RP] float32: the rank values of part ``part`` of the rows in ``sel`` (``ip``: their rows of the
    shrink's output, [rows, 1] pointers; other rows and the padding of the rank to RP: zeros). SPLIT > 1: the sum
    of that many partials, summed here."""
    r = tl.arange(0, RP)  # the rank padded to 16 (the dot's least inner size): the padding reads nothing
    if SPLIT == 1:
        return tl.load(ip + part * R + r[None, :], mask=sel[:, None] & (r < R)[None, :], other=0.0)
    else:
        s = tl.arange(0, SPLIT)
        parts = tl.load(
            ip[:, :, None] + s[None, :, None] * JP + part * R + r[None, None, :],
            mask=sel[:, None, None] & (r < R)[None, None, :],
            other=0.0,
        )
        return tl.sum(parts, axis=1)


@triton.jit
def _times_b(
    inter, bp, cn, cmask, N, R: tl.constexpr, RP: tl.constexpr, BLOCK_M: tl.constexpr, DOT: tl.constexpr
):
    """[rows, len(cn)] float32: ``inter`` [rows, RP] times B at columns ``cn`` (``bp``: one slot's B, [R, N]);
    a block of rows in one ``tl.dot`` of precision DOT."""
    r = tl.arange(0, RP)
    b = tl.load(bp + r[:, None] * N + cn[None, :], mask=(r < R)[:, None] & cmask[None, :], other=0.0)
    if BLOCK_M == 1:
        return tl.sum(inter[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    else:
        return tl.dot(inter, b.to(tl.float32), input_precision=DOT)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _slots_used(idx):
    """Bit s set: a row of ``idx`` is on pool slot s (one reduction for all slots)."""
    return tl.reduce(tl.where(idx >= 0, 1 << tl.maximum(idx, 0), 0), 0, _or)


@triton.jit
def _lora_expand_kernel(
    y_ptr,
    inter_ptr,
    b_ptr,
    idx_ptr,
    rows,
    N,
    stride_y,
    stride_i,
    stride_is,
    stride_bs,
    B1,
    B2,
    SLOTS: tl.constexpr,
    R: tl.constexpr,
    RP: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT: tl.constexpr,
):
    n0 = tl.program_id(0) * BLOCK_N
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    idx = tl.load(idx_ptr + m, mask=m < rows, other=-1)
    has = idx >= 0
    used = _slots_used(idx)
    if used != 0:
        rows64 = m.to(tl.int64)
        part = (n0 >= B1).to(tl.int32) + (n0 >= B2).to(tl.int32)  # a tile lies inside one part
        cols = tl.arange(0, BLOCK_N)
        cm = n0 + cols < N
        yp = y_ptr + rows64[:, None] * stride_y + n0 + cols[None, :]
        ym = has[:, None] & cm[None, :]
        yv = tl.load(yp, mask=ym, other=0.0).to(tl.float32)
        ip = inter_ptr + rows64[:, None] * stride_i
        d = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for slot in range(SLOTS):
            if (used >> slot) & 1:
                inter = _rank_values(ip + slot * stride_is, idx == slot, part, R, RP, JP, SPLIT)
                d += _times_b(inter, b_ptr + slot * stride_bs, n0 + cols, cm, N, R, RP, BLOCK_M, DOT)
        tl.store(yp, (yv + d).to(y_ptr.dtype.element_ty), mask=ym)


@triton.jit
def _lora_expand_silu_kernel(
    y_ptr,
    inter_ptr,
    b_ptr,
    idx_ptr,
    out_ptr,
    rows,
    FF,
    stride_y,
    stride_i,
    stride_is,
    stride_bs,
    SLOTS: tl.constexpr,
    R: tl.constexpr,
    RP: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT: tl.constexpr,
):
    """gate/up: the expand of both parts and SiLU(gate)·up in one pass (every row: base rows add nothing)."""
    n0 = tl.program_id(0) * BLOCK_N
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = m < rows
    idx = tl.load(idx_ptr + m, mask=mm, other=-1)
    m = m.to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    cm = n0 + cols < FF
    ym = mm[:, None] & cm[None, :]
    yp = y_ptr + m[:, None] * stride_y + n0 + cols[None, :]
    g = tl.load(yp, mask=ym, other=0.0).to(tl.float32)
    u = tl.load(yp + FF, mask=ym, other=0.0).to(tl.float32)
    ip = inter_ptr + m[:, None] * stride_i
    used = _slots_used(idx)
    for slot in range(SLOTS):
        if (used >> slot) & 1:
            bp = b_ptr + slot * stride_bs
            sel = idx == slot
            inter_g = _rank_values(ip + slot * stride_is, sel, 0, R, RP, JP, SPLIT)
            g += _times_b(inter_g, bp, n0 + cols, cm, 2 * FF, R, RP, BLOCK_M, DOT)
            inter_u = _rank_values(ip + slot * stride_is, sel, 1, R, RP, JP, SPLIT)
            u += _times_b(inter_u, bp, FF + n0 + cols, cm, 2 * FF, R, RP, BLOCK_M, DOT)
    dtype = y_ptr.dtype.element_ty
    g = g.to(dtype).to(tl.float32)  # rounded as the product stored by the expand alone would be
    u = u.to(dtype).to(tl.float32)
    act = (
        (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
    )  # rounded like the eager act_fn
    tl.store(out_ptr + m[:, None] * FF + n0 + cols[None, :], (act * u).to(out_ptr.dtype.element_ty), mask=ym)


@triton.jit
def _lora_rope_store_kernel(
    qkv_ptr,
    inter_ptr,
    b_ptr,
    idx_ptr,
    pos_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    rows,
    stride_qkv,
    stride_i,
    stride_is,
    stride_bs,
    stride_cb,
    stride_ch,
    stride_ct,
    N_HEADS: tl.constexpr,
    N_KV: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    SLOTS: tl.constexpr,
    R: tl.constexpr,
    RP: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT: tl.constexpr,
):
    """``kernels._rope_store_kernel`` with each row's Q/K/V adapter product added to its head first (the expand
    of the qkv projection fused into the rotary + KV write); one program per head and block of rows."""
    h = tl.program_id(0)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mm = m < rows
    idx = tl.load(idx_ptr + m, mask=mm, other=-1)
    m = m.to(tl.int64)
    N = (N_HEADS + 2 * N_KV) * 2 * HALF
    d = tl.arange(0, HALF)
    rm = mm[:, None] & (d < HALF)[None, :]
    dtype = qkv_ptr.dtype.element_ty
    is_kv = h >= N_HEADS
    part = is_kv.to(tl.int32)  # q heads: part 0; kv heads: k is part 1 (v, part 2)
    col = h * (2 * HALF)
    vcol = (N_KV + h) * (2 * HALF)  # a kv head's v columns (N_HEADS + N_KV + kh)
    pos = tl.load(pos_ptr + m, mask=mm, other=0)
    c = tl.load(cos_ptr + pos[:, None] * HALF + d[None, :], mask=rm, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + pos[:, None] * HALF + d[None, :], mask=rm, other=0.0).to(tl.float32)
    src = qkv_ptr + m[:, None] * stride_qkv + d[None, :]
    x1 = tl.load(src + col, mask=rm, other=0.0).to(tl.float32)
    x2 = tl.load(src + col + HALF, mask=rm, other=0.0).to(tl.float32)
    vm = rm & is_kv
    v1 = tl.load(src + vcol, mask=vm, other=0.0).to(tl.float32)
    v2 = tl.load(src + vcol + HALF, mask=vm, other=0.0).to(tl.float32)
    dm = d < HALF
    ip = inter_ptr + m[:, None] * stride_i
    used = _slots_used(idx)
    for slot in range(SLOTS):
        if (used >> slot) & 1:
            bp = b_ptr + slot * stride_bs
            sel = idx == slot
            inter = _rank_values(
                ip + slot * stride_is, sel, part, R, RP, JP, SPLIT
            )  # once for both halves of the head
            x1 += _times_b(inter, bp, col + d, dm, N, R, RP, BLOCK_M, DOT)
            x2 += _times_b(inter, bp, col + HALF + d, dm, N, R, RP, BLOCK_M, DOT)
            if is_kv:
                inter_v = _rank_values(ip + slot * stride_is, sel, 2, R, RP, JP, SPLIT)
                v1 += _times_b(inter_v, bp, vcol + d, dm, N, R, RP, BLOCK_M, DOT)
                v2 += _times_b(inter_v, bp, vcol + HALF + d, dm, N, R, RP, BLOCK_M, DOT)
    x1 = x1.to(dtype).to(tl.float32)  # rounded as the product stored by the expand alone would be
    x2 = x2.to(dtype).to(tl.float32)
    o1 = (x1 * c - x2 * s).to(q_out_ptr.dtype.element_ty)
    o2 = (x2 * c + x1 * s).to(q_out_ptr.dtype.element_ty)
    if h < N_HEADS:
        qo = q_out_ptr + (m[:, None] * N_HEADS + h) * (2 * HALF) + d[None, :]
        tl.store(qo, o1, mask=rm)
        tl.store(qo + HALF, o2, mask=rm)
    else:
        kh = h - N_HEADS
        at = tl.load(slot_ptr + m, mask=mm, other=0).to(tl.int64)  # each row's KV slot
        blk = at // BLOCK_SIZE
        off = at % BLOCK_SIZE
        dst = (blk * stride_cb + kh * stride_ch + off * stride_ct)[:, None] + d[None, :]
        tl.store(k_cache_ptr + dst, o1, mask=rm)
        tl.store(k_cache_ptr + dst + HALF, o2, mask=rm)
        tl.store(v_cache_ptr + dst, v1.to(v_cache_ptr.dtype.element_ty), mask=rm)
        tl.store(v_cache_ptr + dst + HALF, v2.to(v_cache_ptr.dtype.element_ty), mask=rm)


@triton.jit
def _lora_expand_rms_norm_kernel(
    y_ptr,
    inter_ptr,
    b_ptr,
    idx_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    N,
    eps,
    stride_i,
    stride_is,
    stride_bs,
    R: tl.constexpr,
    JP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """o / down (one part): the row's adapter product added to the base output ``y`` and rounded as the expand alone
    stores it, then ``kernels._rms_norm_kernel`` with a residual (the same add, rounding and norm): ``residual +=
    y'`` in place, the normed row into ``out``. One program per row (the norm needs the whole row); ``y`` itself is
    not written (the decode step reads only the norm's outputs)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    y = tl.load(y_ptr + row * N + offs, mask=mask, other=0.0)
    idx = tl.load(idx_ptr + row).to(tl.int64)
    if idx >= 0:  # base rows: y as it is (the expand leaves them alone)
        # this row's rank values (of its slot, in the fold's buffer of every slot's)
        ip = inter_ptr + row * stride_i + idx * stride_is
        bp = b_ptr + idx * stride_bs
        s = tl.arange(0, SPLIT)
        d = tl.zeros((BLOCK,), dtype=tl.float32)
        for r in tl.static_range(R):
            v = tl.sum(tl.load(ip + s * JP + r), axis=0)  # SPLIT > 1: the shrink's partial sums, summed here
            b = tl.load(bp + r * N + offs, mask=mask, other=0.0)
            d += v * b.to(tl.float32)
        y = (y.to(tl.float32) + d).to(y.dtype)  # rounded as the product stored by the expand alone would be
    res = tl.load(res_ptr + row * N + offs, mask=mask, other=0.0)
    x = (y.to(tl.float32) + res.to(tl.float32)).to(y.dtype)  # rounded like the eager residual add
    tl.store(res_ptr + row * N + offs, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    normed = (xf * tl.rsqrt(var + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + offs, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def split_of(k: int) -> tuple[int, int]:
    """(number of K chunks, a power of two; chunk length, a multiple of the block)."""
    split = 1
    while split < MAX_SPLIT and k // (split * 2) >= MIN_K_PER:
        split *= 2
    per = -(-k // split)
    per = -(-per // SHRINK_BLOCK_K) * SHRINK_BLOCK_K
    return split, per


def new_partial(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The shrink's output for rows ``x`` and A stack ``a``: [rows, depth, parts·R padded] float32, uninitialised
    (rows of the base model are neither written nor read). Depth: the split-K partial sums, then, when the shrink sums
    them (SHRINK_SUMS_FROM_ROWS), the rank values. One chunk: the partial is the rank values."""
    rows, k = x.shape
    split, _per = split_of(k)
    depth = split + 1 if split > 1 and rows >= SHRINK_SUMS_FROM_ROWS else split
    return torch.empty(
        (rows, depth, triton.next_power_of_2(a.shape[1])), dtype=torch.float32, device=x.device
    )


def _summed_by_expand(partial: torch.Tensor) -> int:
    """How many partials the expand sums per row: the depth when it is the split (a power of two), else 1 (the
    rank values are ready, last)."""
    depth = partial.shape[1]
    return depth if depth & (depth - 1) == 0 else 1


@dataclass(frozen=True)
class _ExpandInput:
    """What an expand reads: ``values`` (the first partial or the rank values of slot 0, [rows, ...] float32),
    ``split`` (partials summed per value), ``jp`` (the partials' pitch), ``slot_stride`` (from one pool slot's values
    to the next: 0 for the shrink's output, which holds the row's own slot only; parts·R for the fold's)."""

    values: torch.Tensor
    split: int
    jp: int
    slot_stride: int


def _expand_input(partial: torch.Tensor, slots: int) -> _ExpandInput:
    """``partial``: the shrink's output (``new_partial``, 3-D: [rows, depth, parts·R padded]) or the fold's rank
    values (2-D: [rows, slots·parts·R] float32, every slot's, from ``kernels.Tail``)."""
    if partial.dim() == 2:
        assert partial.dtype == torch.float32 and partial.shape[1] % slots == 0
        return _ExpandInput(partial, 1, 16, partial.shape[1] // slots)
    split = _summed_by_expand(partial)
    values = partial[:, 0] if split > 1 else partial[:, -1]
    return _ExpandInput(values, split, partial.shape[2], 0)


def new_counters(device: torch.device, rows: int = 64) -> torch.Tensor:
    """The shrink's per-row counters (zeros; every shrink leaves them at zero). One set per stream of shrinks:
    two shrinks running at once must not share it."""
    return torch.zeros(rows, dtype=torch.int32, device=device)


def rank_values(partial: torch.Tensor) -> torch.Tensor:
    """[rows, parts·R padded]: each row's x·A as ``lora_shrink`` left it summed (a view of ``partial``)."""
    assert _summed_by_expand(partial) == 1, "the expand sums these partials"
    return partial[:, -1]


def lora_shrink(
    x: torch.Tensor,
    a: torch.Tensor,
    index: torch.Tensor,
    partial: torch.Tensor,
    counters: torch.Tensor | None = None,
) -> None:
    """``partial`` (``new_partial``) = the split-K partial sums of ``x[i]·A[index[i]]ᵀ`` and, when it has room for
    them, their sums (x [rows, K] contiguous; a [slots, J, K]). ``counters``: ``new_counters`` of at least ``rows``
    (None: fresh zeros)."""
    rows, k = x.shape
    split, per = split_of(k)
    assert partial.shape[1] in (split, split + 1)
    total = split > 1 and partial.shape[1] == split + 1
    if counters is None:
        counters = new_counters(x.device, rows)
    assert counters.numel() >= rows
    _lora_shrink_kernel[(rows, split)](
        x,
        a,
        index,
        partial,
        partial[:, -1],
        counters,
        k,
        per,
        x.stride(0),
        a.stride(0),
        partial.stride(0),
        J=a.shape[1],
        JP=partial.shape[2],
        SPLIT=split,
        SUM=total,
        BLOCK_K=SHRINK_BLOCK_K,
        num_warps=4,
    )


def _slots(b: torch.Tensor) -> int:
    assert b.shape[0] <= 31, "the kernels keep the slots in use as bits of an int32"
    return b.shape[0]


def _row_block(rows: int) -> int:
    return 1 if rows == 1 else ROW_BLOCK


def _column_tile(block_n: int, n: int, row_blocks: int) -> int:
    """``block_n`` halved (it still divides every part's width) while the grid has fewer than MIN_PROGRAMS."""
    while block_n > 32 and triton.cdiv(n, block_n) * row_blocks < MIN_PROGRAMS:
        block_n //= 2
    return block_n


def lora_expand(
    partial: torch.Tensor,
    y: torch.Tensor,
    b: torch.Tensor,
    index: torch.Tensor,
    outs: tuple[int, ...],
    rank: int,
    block_n: int,
) -> None:
    """``y[i] += (x[i]·A)ₚ·B[index[i]]`` per part p (the columns of part p read its R values), in place; rows with
    index -1 are left alone. ``block_n``: the largest column tile (a power of two dividing every part's width)."""
    rows, n = y.shape
    b1 = outs[0] if len(outs) > 1 else n
    b2 = outs[0] + outs[1] if len(outs) > 2 else n
    inp = _expand_input(partial, _slots(b))
    block_m = _row_block(rows)
    row_blocks = triton.cdiv(rows, block_m)
    block = _column_tile(block_n, n, row_blocks)
    _lora_expand_kernel[(triton.cdiv(n, block), row_blocks)](
        y,
        inp.values,
        b,
        index,
        rows,
        n,
        y.stride(0),
        inp.values.stride(0),
        inp.slot_stride,
        b.stride(0),
        b1,
        b2,
        SLOTS=_slots(b),
        R=rank,
        RP=max(16, rank),
        JP=inp.jp,
        SPLIT=inp.split,
        BLOCK_N=block,
        BLOCK_M=block_m,
        DOT=DOT_PRECISION,
        num_warps=4,
    )


def lora_expand_silu(
    partial: torch.Tensor, gate_up: torch.Tensor, b: torch.Tensor, index: torch.Tensor, rank: int
) -> torch.Tensor:
    """SiLU(gate)·up of ``gate_up`` [rows, 2·FF] plus each row's adapter product (parts gate, up), in one kernel:
    the expand and ``silu_mul`` of the decode step fused (base rows: ``silu_mul`` alone). Returns [rows, FF]."""
    rows, two_ff = gate_up.shape
    ff = two_ff // 2
    out = torch.empty((rows, ff), dtype=gate_up.dtype, device=gate_up.device)
    inp = _expand_input(partial, _slots(b))
    block_m = _row_block(rows)
    row_blocks = triton.cdiv(rows, block_m)
    block = _column_tile(128, ff, row_blocks)
    _lora_expand_silu_kernel[(triton.cdiv(ff, block), row_blocks)](
        gate_up,
        inp.values,
        b,
        index,
        out,
        rows,
        ff,
        gate_up.stride(0),
        inp.values.stride(0),
        inp.slot_stride,
        b.stride(0),
        SLOTS=_slots(b),
        R=rank,
        RP=max(16, rank),
        JP=inp.jp,
        SPLIT=inp.split,
        BLOCK_N=block,
        BLOCK_M=block_m,
        DOT=DOT_PRECISION,
        num_warps=4,
    )
    return out


def lora_rope_store(
    partial: torch.Tensor,
    qkv: torch.Tensor,
    b: torch.Tensor,
    index: torch.Tensor,
    rank: int,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    n_heads: int,
    n_kv: int,
    head_dim: int,
) -> torch.Tensor:
    """``kernels.rope_store`` of ``qkv`` plus each row's adapter product (parts q, k, v), in one kernel."""
    tokens = qkv.shape[0]
    q = torch.empty((tokens, n_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    inp = _expand_input(partial, _slots(b))
    block_m = _row_block(tokens)
    _lora_rope_store_kernel[(n_heads + n_kv, triton.cdiv(tokens, block_m))](
        qkv,
        inp.values,
        b,
        index,
        positions,
        cos,
        sin,
        q,
        k_cache,
        v_cache,
        slot_mapping,
        tokens,
        qkv.stride(0),
        inp.values.stride(0),
        inp.slot_stride,
        b.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        N_HEADS=n_heads,
        N_KV=n_kv,
        HALF=head_dim // 2,
        BLOCK_SIZE=k_cache.shape[2],
        SLOTS=_slots(b),
        R=rank,
        RP=max(16, rank),
        JP=inp.jp,
        SPLIT=inp.split,
        BLOCK_M=block_m,
        DOT=DOT_PRECISION,
        num_warps=1 if block_m == 1 else 4,
    )
    return q


def lora_shrink_expand(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    index: torch.Tensor,
    outs: tuple[int, ...],
    rank: int,
    block_n: int,
) -> None:
    """``y[i] += (x[i]·A[index[i]]ᵀ)·B[index[i]]`` per part, in place; rows with index -1 are left alone.

    x [rows, K]; y [rows, N] (contiguous rows); a [slots, parts·R, K]; b [slots, R, N]; index [rows] int."""
    x = x.contiguous()
    partial = new_partial(x, a)
    lora_shrink(x, a, index, partial)
    lora_expand(partial, y, b, index, outs, rank, block_n)


def lora_expand_rms_norm(
    partial: torch.Tensor,
    y: torch.Tensor,
    b: torch.Tensor,
    index: torch.Tensor,
    rank: int,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor,
) -> torch.Tensor:
    """``kernels.rms_norm(y', weight, eps, residual)`` where ``y'`` is ``y`` [rows, N] plus each row's adapter
    product (one part: o, down; B [slots, R, N]), in one kernel: ``lora_expand`` and the residual add + RMSNorm that
    follows it fused. ``residual`` is updated in place as ``rms_norm`` updates it; ``y`` is left as it is. Returns
    the normed rows."""
    rows, n = y.shape
    assert y.is_contiguous() and residual.is_contiguous() and residual.shape == y.shape
    assert b.shape[2] == n, "one part: B's columns are the output's"
    out = torch.empty_like(y)
    inp = _expand_input(partial, _slots(b))
    block = triton.next_power_of_2(n)
    _lora_expand_rms_norm_kernel[(rows,)](
        y,
        inp.values,
        b,
        index,
        residual,
        weight,
        out,
        n,
        eps,
        inp.values.stride(0),
        inp.slot_stride,
        b.stride(0),
        R=rank,
        JP=inp.jp,
        SPLIT=inp.split,
        BLOCK=block,
        num_warps=8 if block >= 4096 else 4,
    )
    return out
